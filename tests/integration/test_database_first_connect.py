"""A service started with a database that does not answer says so in one line (exit 2 through
ConfigurationError), naming the database without its password, instead of a traceback of a
hundred lines ending in exit 1 (found by an outside-in check)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from iotdefender.service import ConfigurationError, _migrate_when_reachable
from iotdefender.store.database import create_engine
from tests.support.processes import free_port


def test_a_database_that_never_answers_is_a_configuration_error_without_its_password():
    engine = create_engine(f"postgresql://iot:s3cret@127.0.0.1:{free_port()}/iotd", round_trip_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as refused:
        _migrate_when_reachable(engine, patience_s=1.5)
    message = str(refused.value)
    assert time.monotonic() - started >= 1.5  # it waited for the database first
    assert message.startswith("--database-url: cannot connect to the database at ") and "Connection refused" in message
    assert "s3cret" not in message and "iot:***@" in message, message
    engine.dispose()


def test_serve_exits_2_with_one_line(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "iotdefender", "serve", "--database-url",
                           f"postgresql://iot:s3cret@127.0.0.1:{free_port()}/iotd", "--data-dir", str(tmp_path),
                           "--api-port", str(free_port()), "--mqtt-port", str(free_port())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("iotdefender: error: --database-url: cannot connect to the database"), lines[-5:]
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
