"""iotdefender: a self-hosted, AWS-compatible IoT Device Defender Detect."""
__version__ = "0.1.0"
