"""A simulated fleet of Device Defender devices, for demos, tests and benchmarks."""
