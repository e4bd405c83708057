"""Work that one process of a cluster does at a time: a PostgreSQL advisory lock around it.

Cluster nodes share one database; some background work must not run on two of them at once (ML
training writes model versions: two trainers would build the same version twice). A session-level
``pg_try_advisory_lock`` is the database's own mutual exclusion, released by PostgreSQL when the
holder's connection ends (a node killed mid-work frees it), so nothing needs a lease of its own.
SQLite belongs to one process: there the work always runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Engine

T = TypeVar("T")

# Keys of the work done alone (any 64-bit constants no other advisory lock of the database uses).
ML_TRAINING = 0x696F7464_6D6C7472  # 'iotd' 'mltr'
HISTORY_COMPACTION = 0x696F7464_68636D70  # 'iotd' 'hcmp'


def run_alone(engine: Engine, key: int, work: Callable[[], T]) -> T | None:
    """``work()`` if no other session holds ``key``, else None at once (the holder is doing it)."""
    if engine.dialect.name != "postgresql":
        return work()
    with engine.connect() as conn:
        held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
        conn.commit()
        if not held:
            return None
        try:
            return work()
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            conn.commit()
