"""The default broker: Mosquitto run as a child of the service, with iotdefender's plugin."""
