"""Fixtures of the integration tests."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request):
    """A database at the head revision on a real SQLite file, then on a real PostgreSQL."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").create_database(f"it{time.time_ns()}")
    else:
        url = sqlite_url(Path(tempfile.mkdtemp()))
    engine = create_engine(url)
    upgrade_to_head(engine)
    yield engine
    engine.dispose()
