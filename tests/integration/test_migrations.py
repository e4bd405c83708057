"""The Alembic migrations build exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head
from iotdefender.store.schema import metadata


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrated_database_matches_schema(backend, request):
    url = (request.getfixturevalue("postgres").create_database(f"mig{time.time_ns()}") if backend == "postgresql"
           else sqlite_url(Path(tempfile.mkdtemp())))
    engine = create_engine(url)
    upgrade_to_head(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert differences == []
