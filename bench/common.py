"""What every benchmark result records about where it ran: machine, Python and package versions."""

from __future__ import annotations

import json
import os
import platform
import signal
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

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


class SetClock:
    """A clock the benchmark sets (``now``), for code that takes its time as a function."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bounded(seconds: int) -> None:
    """The whole run is bounded; SIGALRM/SIGTERM unwind through the `finally`s that stop everything."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"benchmark stopped by signal {signum} (limit {seconds} s)")

    signal.signal(signal.SIGALRM, expire)
    signal.signal(signal.SIGTERM, expire)
    signal.alarm(seconds)


def report(result: dict[str, Any], output: Path | None, hidden: tuple[str, ...] = ("machine", "command")) -> None:
    """Write the whole result to ``output`` (if given) and print it without the ``hidden`` keys."""
    if output:
        output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in hidden}))
