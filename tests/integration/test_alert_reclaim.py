"""A claimed outbox row left by a deliverer that died mid-send: on one box the restarted service
sends it at once; a cluster node leaves it to its claimer until the hold lapses."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from pathlib import Path

import pytest

from iotdefender.alerts.outbox import AlertDelivery
from iotdefender.alerts.routes import AlertRoutes
from iotdefender.alerts.subscriptions import Webhook
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store import alert_outbox
from iotdefender.store.database import writing
from tests.support.webhook import WebhookReceiver

TOPIC = "arn:aws:sns:us-east-1:123456789012:ops"


def received_within(delivery: AlertDelivery, receiver: WebhookReceiver, seconds: float) -> list[int]:
    async def run() -> list[int]:
        task = asyncio.create_task(delivery.run())
        got: list[int] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                got.append(receiver.received.get_nowait()["message"]["n"])
            except queue.Empty:
                await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return got

    return asyncio.run(run())


@pytest.mark.parametrize("sole_deliverer", [True, False])
def test_a_claim_left_by_a_dead_deliverer(tmp_path: Path, sole_deliverer: bool):
    engine = build_api(Settings(data_dir=tmp_path)).context.engine
    receiver = WebhookReceiver("s")
    routes = AlertRoutes({TOPIC: [Webhook(receiver.url, "s")]})
    try:
        with writing(engine) as conn:
            alert_outbox.insert_pending(conn, [{"target_arn": TOPIC, "destination": f"webhook:{receiver.url}",
                                                "message": json.dumps({"n": n}), "created_at": 1000.0}
                                               for n in range(3)])
            alert_outbox.mark(conn, 3, status="pending", attempts=1, next_attempt_at=time.time() + 60)  # backing off
        with writing(engine) as conn:  # the previous process claimed two rows, then was killed
            assert [r.id for r in alert_outbox.claim(conn, time.time(), 2, 120.0)] == [1, 2]
        delivery = AlertDelivery(engine, routes, "us-east-1", sole_deliverer=sole_deliverer)
        got = received_within(delivery, receiver, 2.0)
        # One box: both claims are its own previous life's, sent at once; a row backing off keeps
        # its backoff. A cluster node: the claims may be a live node's, left until their hold lapses.
        assert sorted(got) == ([0, 1] if sole_deliverer else [])
    finally:
        receiver.close()
        engine.dispose()
