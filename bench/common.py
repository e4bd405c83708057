"""What every benchmark result records about where it ran: machine, Python and package versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("iotdefender", "gmqtt", "msgspec", "cbor2", "SQLAlchemy", "botocore", "starlette", "uvicorn",
            "numpy", "paho-mqtt")


def environment() -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "versions": versions}
