"""MQTT transports behind one interface: the embedded broker, or an external broker joined as a client."""
