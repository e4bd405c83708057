"""SQL for the alert outbox: rows written with the events they announce, read and marked by delivery."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from iotdefender.store.schema import alert_outbox


def insert_pending(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """New rows (target_arn, destination, message, created_at), due at once, in the caller's transaction."""
    if rows:
        conn.execute(alert_outbox.insert(), [{**row, "attempts": 0, "next_attempt_at": 0.0, "status": "pending"}
                                             for row in rows])


def due(conn: Connection, now: float, limit: int) -> Sequence[Row[Any]]:
    """Pending rows whose next attempt is due, oldest first."""
    return conn.execute(sa.select(alert_outbox).where(alert_outbox.c.status == "pending",
                                                      alert_outbox.c.next_attempt_at <= now)
                        .order_by(alert_outbox.c.id).limit(limit)).all()


def mark(conn: Connection, row_id: int, **values: Any) -> None:
    """Record an attempt's outcome (attempts, status, last_error, next_attempt_at)."""
    conn.execute(alert_outbox.update().where(alert_outbox.c.id == row_id).values(**values))


def dead_letters(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """Rows that exhausted their attempts, newest first."""
    rows = conn.execute(sa.select(alert_outbox).where(alert_outbox.c.status == "dead")
                        .order_by(alert_outbox.c.id.desc()).limit(limit)).mappings().all()
    # Row keys are SQLAlchemy quoted_name (a str subclass), which orjson refuses as keys.
    return [{str(k): v for k, v in r.items()} for r in rows]
