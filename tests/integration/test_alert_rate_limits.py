"""Per-destination rate limits in the outbox's delivery: a destination at its limit holds up
neither the other destinations' alerts nor more rows than a round can send."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from pathlib import Path

import sqlalchemy as sa

from iotdefender.alerts.outbox import CLAIM_BATCH, AlertDelivery
from iotdefender.alerts.routes import AlertRoutes
from iotdefender.alerts.subscriptions import Webhook
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store import alert_outbox
from iotdefender.store.database import create_engine, writing
from tests.support.webhook import WebhookReceiver

BUSY, QUIET = "arn:aws:sns:us-east-1:123456789012:busy", "arn:aws:sns:us-east-1:123456789012:quiet"
RATE = 5.0  # alerts a second a destination


def test_a_destination_at_its_rate_limit_holds_up_no_other_and_no_more_rows_than_a_round_sends(tmp_path: Path):
    """300 alerts for one webhook, then one for another: the second is sent within a second or two,
    not after the first's backlog (60 s at 5 a second), and the rows claimed at any moment (those a
    node killed then would hold for the claim's two minutes) stay within one round's batch."""
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    build_api(Settings(data_dir=tmp_path, database_url=url)).context.engine.dispose()  # migrated
    busy, quiet = WebhookReceiver("s"), WebhookReceiver("s")
    routes = AlertRoutes({BUSY: [Webhook(busy.url, "s")], QUIET: [Webhook(quiet.url, "s")]})
    engine = create_engine(url)
    rows = [{"target_arn": BUSY, "destination": f"webhook:{busy.url}", "message": json.dumps({"n": n}),
             "created_at": 1000.0} for n in range(300)]
    rows.append({"target_arn": QUIET, "destination": f"webhook:{quiet.url}", "message": json.dumps({"n": 300}),
                 "created_at": 1000.0})
    with writing(engine) as conn:
        alert_outbox.insert_pending(conn, rows)
    claimed_at_most = 0
    outcome: dict[str, float] = {}

    async def deliver() -> None:
        nonlocal claimed_at_most
        node = AlertDelivery(engine, routes, "us-east-1", rate_per_destination=RATE)
        task = asyncio.create_task(node.run())
        started = time.monotonic()
        while time.monotonic() - started < 6.0 and "quiet" not in outcome:
            with engine.connect() as conn:
                sending = conn.execute(sa.text("SELECT count(*) FROM alert_outbox WHERE status = 'sending'")).scalar()
            claimed_at_most = max(claimed_at_most, int(sending or 0))
            try:
                quiet.received.get_nowait()
                outcome["quiet"] = time.monotonic() - started
            except queue.Empty:
                await asyncio.sleep(0.02)
        outcome["busy_sent"] = busy.received.qsize()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(deliver())
    finally:
        busy.close()
        quiet.close()
        engine.dispose()
    assert "quiet" in outcome, f"the quiet destination's alert waited behind the busy one's backlog ({outcome})"
    assert outcome["busy_sent"] < 100  # the busy destination was held to its rate meanwhile
    assert claimed_at_most <= CLAIM_BATCH
