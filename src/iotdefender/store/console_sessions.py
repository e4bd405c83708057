"""Console sessions: rows of live session ids and when each expires (console/sessions.py says why)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.schema import console_sessions as sessions


def start(conn: Connection, session_id: str, expires_at: float, now: float) -> None:
    """Record a new session; forget the expired ones, so the table holds only logins of one max age."""
    conn.execute(sa.delete(sessions).where(sessions.c.expires_at <= now))
    conn.execute(sa.insert(sessions).values(session_id=session_id, expires_at=expires_at))


def is_live(conn: Connection, session_id: str, now: float) -> bool:
    expires_at = conn.execute(sa.select(sessions.c.expires_at)
                              .where(sessions.c.session_id == session_id)).scalar()
    return expires_at is not None and expires_at > now


def end(conn: Connection, session_id: str) -> None:
    conn.execute(sa.delete(sessions).where(sessions.c.session_id == session_id))
