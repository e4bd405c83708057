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
from sqlalchemy.engine import Connection, Engine

T = TypeVar("T")

# Keys of the work done alone (any 64-bit constants no other advisory lock of the database uses).
ML_TRAINING = 0x696F7464_6D6C7472  # 'iotd' 'mltr'
HISTORY_COMPACTION = 0x696F7464_68636D70  # 'iotd' 'hcmp'
NATS_EVENTS = 0x696F7464_6E617473  # 'iotd' 'nats'
EXTERNAL_INTAKE = 0x696F7464_6D717474  # 'iotd' 'mqtt'
RETENTION = 0x696F7464_72657465  # 'iotd' 'rete'
LATEST_VALUES = 0x696F7464_6C617374  # 'iotd' 'last'
CONTROL_PLANE = 0x696F7464_6374726C  # 'iotd' 'ctrl'


def serialize(conn: Connection, key: int) -> None:
    """Wait until no other transaction holds ``key``, and hold it until this one ends (PostgreSQL's
    ``pg_advisory_xact_lock``). For writes that check the database and then change it: under READ
    COMMITTED two of them check at once and both change it. SQLite has one writer already."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def run_alone(engine: Engine, key: int, work: Callable[[], T]) -> T | None:
    """``work()`` if no other session holds ``key``, else None at once (the holder is doing it)."""
    if engine.dialect.name != "postgresql":
        return work()
    conn = hold(engine, key)
    if conn is None:
        return None
    try:
        return work()
    finally:
        let_go(conn, key)


def hold(engine: Engine, key: int) -> Connection | None:
    """Take ``key`` for as long as the returned connection lives (work that lasts: a reader of
    events that must run on one node), or None if another session holds it. PostgreSQL only."""
    conn = engine.connect()
    try:
        held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
        conn.commit()
    except Exception:
        conn.invalidate()
        conn.close()
        raise
    if not held:
        conn.close()
        return None
    return conn


def still_held(conn: Connection) -> bool:
    """Whether the connection holding a lock still answers (if it broke, PostgreSQL freed the lock)."""
    try:
        conn.execute(text("SELECT 1"))
        conn.commit()
        return True
    except Exception:
        return False


def let_go(conn: Connection, key: int) -> None:
    """Free a lock taken with ``hold``; a connection that cannot is discarded (which frees it too),
    never returned to the pool with the lock."""
    try:
        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        conn.commit()
    except Exception:
        conn.invalidate()
    conn.close()
