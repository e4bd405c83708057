"""Alerts delivered or dead are deleted with the violation events they announced (the violation
retention after their last attempt); every alert ever sent stayed a row before. Pending ones, and
ones being sent, are never deleted. SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from iotdefender.service import build_api, retention_round
from iotdefender.settings import Settings
from iotdefender.store import alert_outbox
from iotdefender.store.database import create_engine
from iotdefender.store.schema import alert_outbox as table

RETENTION_S = 3600.0
NOW = 100_000.0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_finished_alerts_go_with_their_events_and_the_others_stay(backend, request, tmp_path):
    url = request.getfixturevalue("postgres").create_database(f"outret{time.time_ns()}") if backend == "postgresql" else None
    engine = build_api(Settings(data_dir=tmp_path, database_url=url)).context.engine
    if url is not None:
        engine = create_engine(url)
    with engine.begin() as conn:
        alert_outbox.insert_pending(conn, [{"target_arn": "arn:t", "destination": "webhook:http://x", "message": name,
                                            "created_at": 1.0} for name in
                                           ("old-delivered", "old-dead", "old-pending", "old-sending",
                                            "recent-delivered", "recent-dead")])
        ids = {row.message: row.id for row in conn.execute(sa.select(table.c.id, table.c.message))}
        last_attempt = {"old": NOW - RETENTION_S - 10, "recent": NOW - RETENTION_S + 10}
        for message, row_id in ids.items():
            age, status = message.split("-")
            status = {"sending": alert_outbox.SENDING}.get(status, status)
            alert_outbox.mark(conn, row_id, status=status, next_attempt_at=last_attempt[age])
    assert retention_round(engine, NOW, RETENTION_S, RETENTION_S) == (0, 0, 0, 2, 0, 0)
    with engine.connect() as conn:
        left = sorted(conn.execute(sa.select(table.c.message)).scalars())
    assert left == ["old-pending", "old-sending", "recent-dead", "recent-delivered"]
