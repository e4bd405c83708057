"""Per-destination rate limits in the outbox's delivery: a destination at its limit holds up
neither the other destinations' alerts nor more rows than a round can send."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from pathlib import Path
from typing import Any

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


def _backlog_then_one(tmp_path: Path, busy: WebhookReceiver, backlog: int, quiet: WebhookReceiver,
                      **delivery: Any) -> tuple[int, int]:
    """``backlog`` alerts for ``busy``'s webhook, then one for ``quiet``'s, delivered by one node
    until ``quiet`` receives its alert: (how many ``busy`` had received then, the most rows of one
    destination claimed at once meanwhile)."""
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    build_api(Settings(data_dir=tmp_path, database_url=url)).context.engine.dispose()  # migrated
    routes = AlertRoutes({BUSY: [Webhook(busy.url, "s")], QUIET: [Webhook(quiet.url, "s")]})
    engine = create_engine(url)
    rows = [{"target_arn": BUSY, "destination": f"webhook:{busy.url}", "message": json.dumps({"n": n}),
             "created_at": 1000.0} for n in range(backlog)]
    rows.append({"target_arn": QUIET, "destination": f"webhook:{quiet.url}", "message": json.dumps({"n": backlog}),
                 "created_at": 1000.0})
    with writing(engine) as conn:
        alert_outbox.insert_pending(conn, rows)
    seen = {"busy": -1, "claimed": 0}

    async def deliver() -> None:
        task = asyncio.create_task(AlertDelivery(engine, routes, "us-east-1", **delivery).run())
        deadline = time.monotonic() + 60
        while seen["busy"] < 0 and time.monotonic() < deadline:
            with engine.connect() as conn:
                sending = conn.execute(sa.text("SELECT count(*) FROM alert_outbox WHERE status = 'sending' "
                                               "GROUP BY destination")).scalars().all()
            seen["claimed"] = max([seen["claimed"], *sending])
            try:
                assert quiet.received.get_nowait()["message"] == {"n": backlog}
                seen["busy"] = busy.received.qsize()
            except queue.Empty:
                await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(deliver())
    finally:
        busy.close()
        quiet.close()
        engine.dispose()
    assert seen["busy"] >= 0, "the quiet destination's alert was not sent within 60 s"
    return seen["busy"], seen["claimed"]


def test_a_destination_at_its_rate_limit_holds_up_no_other_and_no_more_rows_than_a_claim_takes(tmp_path: Path):
    """300 alerts for one webhook limited to 5 a second, then one for another: the second is sent
    among the first's first few, not once the backlog ahead of it fell under a claim's size (100
    sent, 20 s), and the rows claimed at any moment (those a node killed then would hold for the
    claim's two minutes) stay within one claim's batch a destination."""
    busy_sent, claimed = _backlog_then_one(tmp_path, WebhookReceiver("s"), 300, WebhookReceiver("s"),
                                           rate_per_destination=RATE)
    assert busy_sent < 100, f"the quiet destination's alert came after {busy_sent} of the busy one's"
    assert claimed <= CLAIM_BATCH


def test_a_slow_destination_delays_only_its_own_alerts(tmp_path: Path):
    """Ten alerts for a webhook that takes 2 s to answer each, then one for another webhook: the
    second is sent beside the slow one's first, not after its ten (sends were one at a time over
    every destination, so one that hangs until the send timeout held every other destination's
    alerts to one per timeout). Order, not time: a loaded machine slows both."""
    slow_sent, _ = _backlog_then_one(tmp_path, WebhookReceiver("s", delay_s=2.0), 10, WebhookReceiver("s"))
    assert slow_sent <= 1, f"the quick webhook's alert came after {slow_sent} slow ones"


def test_a_webhook_that_times_out_is_recorded_with_a_reason(tmp_path: Path):
    """str() of httpx's ReadTimeout is empty: the row's last error and the log said nothing, and
    an operator could not tell a timeout from anything else."""
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    build_api(Settings(data_dir=tmp_path, database_url=url)).context.engine.dispose()  # migrated
    hanging = WebhookReceiver("s", delay_s=3.0)
    engine = create_engine(url)
    with writing(engine) as conn:
        alert_outbox.insert_pending(conn, [{"target_arn": BUSY, "destination": f"webhook:{hanging.url}",
                                            "message": json.dumps({"n": 0}), "created_at": 1000.0}])

    async def deliver() -> None:
        node = AlertDelivery(engine, AlertRoutes({BUSY: [Webhook(hanging.url, "s")]}), "us-east-1",
                             send_timeout_s=0.5, retry_base_s=60.0)
        task = asyncio.create_task(node.run())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            with engine.connect() as conn:
                if conn.execute(sa.text("SELECT attempts FROM alert_outbox")).scalar():
                    break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(deliver())
        with engine.connect() as conn:
            status, attempts, last_error = conn.execute(sa.text("SELECT status, attempts, last_error FROM alert_outbox")).one()
    finally:
        hanging.close()
        engine.dispose()
    assert (status, attempts) == ("pending", 1)
    assert last_error == "ReadTimeout", last_error
