"""SQL for the alert outbox: rows written with the events they announce, read and marked by delivery."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from iotdefender.store.schema import alert_outbox


def insert_pending(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """New rows (target_arn, destination, message, created_at), due at once, in the caller's transaction."""
    if rows:
        conn.execute(alert_outbox.insert(), [{**row, "attempts": 0, "next_attempt_at": 0.0, "status": "pending"}
                                             for row in rows])


# A claimed row is "sending" until its attempt is marked (delivered, pending again, dead) or it is
# released; its next_attempt_at is when the claim lapses. Rows the previous release claimed stay
# "pending" (it knows no other status) and are taken as before once due.
SENDING = "sending"


def claim(conn: Connection, now: float, limit: int, hold_s: float,
          kinds: Iterable[str] | None = None, skip: Iterable[str] = ()) -> Sequence[Row[Any]]:
    """Pending rows whose next attempt is due, and claims that lapsed, oldest first, claimed for
    ``hold_s`` seconds.

    Several nodes deliver from one outbox in cluster mode: the rows are read ``FOR UPDATE SKIP
    LOCKED`` (PostgreSQL; SQLite has one writer and ignores it), marked ``sending`` and their next
    attempt moved past the hold in the same transaction, so another node's claim neither waits for
    them nor takes them, and no alert is sent twice. A node that dies while sending leaves its rows
    due again after the hold (at least once, as any delivery that cannot know whether its request
    arrived); on one box a restart takes them back at once (``reclaim``). With ``kinds``, only rows
    whose destination is of one of them (``kind:address``): a newer release's kinds are left to its
    nodes, never held up by a claim here. Rows for the destinations in ``skip`` (at their rate
    limit) are left for a later claim, so they neither fill the claim ahead of other destinations'
    rows nor sit claimed while they cannot be sent."""
    query = sa.select(alert_outbox).where(alert_outbox.c.status.in_(("pending", SENDING)),
                                          alert_outbox.c.next_attempt_at <= now)
    if kinds is not None:
        query = query.where(sa.or_(*(alert_outbox.c.destination.startswith(f"{kind}:", autoescape=True)
                                     for kind in sorted(kinds))))
    skipped = sorted(set(skip))
    if skipped:
        query = query.where(alert_outbox.c.destination.not_in(skipped))
    rows = conn.execute(query.order_by(alert_outbox.c.id).limit(limit).with_for_update(skip_locked=True)).all()
    if rows:
        conn.execute(alert_outbox.update().where(alert_outbox.c.id.in_([row.id for row in rows]))
                     .values(status=SENDING, next_attempt_at=now + hold_s))
    return rows


def reclaim(conn: Connection, now: float) -> int:
    """Every claimed row due at ``now``: for the one process of a single box, at its start, whose
    claims can only be its previous life's (killed while sending). Not in cluster mode, where a
    claim may be a live node's. Returns how many."""
    return conn.execute(alert_outbox.update().where(alert_outbox.c.status == SENDING)
                        .values(status="pending", next_attempt_at=now)).rowcount


def release(conn: Connection, row_ids: Sequence[int], due_at: float) -> None:
    """Claimed rows not attempted (rate-limited): due again at ``due_at``."""
    if row_ids:
        conn.execute(alert_outbox.update().where(alert_outbox.c.id.in_(list(row_ids)),
                                                 alert_outbox.c.status.in_(("pending", SENDING)))
                     .values(status="pending", next_attempt_at=due_at))


def mark(conn: Connection, row_id: int, **values: Any) -> None:
    """Record an attempt's outcome (attempts, status, last_error, next_attempt_at)."""
    conn.execute(alert_outbox.update().where(alert_outbox.c.id == row_id).values(**values))


def delete(conn: Connection, row_ids: Sequence[int]) -> None:
    """Rows sent that nobody needs to list afterwards (a metrics export's messages)."""
    conn.execute(alert_outbox.delete().where(alert_outbox.c.id.in_(row_ids)))


def dead_letters(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """Rows that exhausted their attempts, newest first."""
    rows = conn.execute(sa.select(alert_outbox).where(alert_outbox.c.status == "dead")
                        .order_by(alert_outbox.c.id.desc()).limit(limit)).mappings().all()
    # Row keys are SQLAlchemy quoted_name (a str subclass), which orjson refuses as keys.
    return [{str(k): v for k, v in r.items()} for r in rows]


def delete_finished_before(conn: Connection, cutoff: float, batch: int = 5000) -> int:
    """Delete up to ``batch`` rows delivered or dead whose last attempt was before ``cutoff`` (the
    violation events they announced are gone by then); returns how many. They were kept forever:
    every alert ever sent stayed a row. Through the index on (status, next attempt)."""
    ids = (sa.select(alert_outbox.c.id).where(alert_outbox.c.status.in_(("delivered", "dead")),
                                             alert_outbox.c.next_attempt_at < cutoff)
           .limit(batch).scalar_subquery())
    return conn.execute(alert_outbox.delete().where(alert_outbox.c.id.in_(ids))).rowcount
