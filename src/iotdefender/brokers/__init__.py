"""MQTT transports behind one interface: Mosquitto run by the service (default), or an external broker joined as a client."""
