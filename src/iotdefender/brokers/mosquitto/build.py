"""Compile the Mosquitto plugin (defender_plugin.c) once per source version, into a cache directory.

Why build at start-up rather than ship a binary: the plugin must match the Mosquitto headers of
the machine (Debian's ``mosquitto-dev``), and a C compiler is a package away on any Debian. The
shared object is named after the hash of its source and flags, so an upgraded source is rebuilt
and an unchanged one costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("defender_plugin.c")
FLAGS = ("-O2", "-fPIC", "-shared", "-Wall")
LIBRARIES = ("-largon2", "-lcrypto", "-ljansson", "-lcbor", "-lm")
HEADERS = ("/usr/include/mosquitto_broker.h", "/usr/include/mosquitto.h", "/usr/include/argon2.h",
           "/usr/include/openssl/x509.h", "/usr/include/jansson.h", "/usr/include/cbor.h")
PACKAGES = "mosquitto mosquitto-dev libmosquitto-dev libargon2-dev libssl-dev libjansson-dev libcbor-dev gcc"


class BrokerUnavailable(Exception):
    """Mosquitto, its headers or a compiler is missing: one line for the operator."""


def missing_requirement() -> str | None:
    """What the default broker lacks on this machine, or None."""
    if mosquitto_executable() is None:
        return "mosquitto"
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None and shutil.which("gcc") is None:
        return "a C compiler"
    for header in HEADERS:
        if not Path(header).exists():
            return header
    return None


def mosquitto_executable() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iotdefender"


def plugin_library(cache_dir: Path) -> Path:
    """The compiled plugin for the current source: built when missing, then reused."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(FLAGS + LIBRARIES).encode()).hexdigest()[:16]
    target = cache_dir / f"defender-plugin-{digest}.so"
    if target.exists():
        return target
    lacking = missing_requirement()
    if lacking is not None:
        raise BrokerUnavailable(f"the default MQTT broker needs {lacking} (Debian: apt-get install {PACKAGES}; "
                                "`make run` installs them), or use --mqtt-url")
    cache_dir.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CC") or shutil.which("cc") or "gcc"
    fd, partial = tempfile.mkstemp(prefix=target.stem, suffix=".so.part", dir=cache_dir)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *FLAGS, "-o", partial, str(SOURCE), *LIBRARIES],
                                capture_output=True, text=True)
        if result.returncode != 0:
            first = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip())
            raise BrokerUnavailable(f"building the Mosquitto plugin failed: {first}")
        os.replace(partial, target)  # atomic: a concurrent start sees the whole file or none
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target
