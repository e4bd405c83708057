"""Two nodes delivering from one PostgreSQL outbox (cluster mode): every alert is sent exactly once."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from pathlib import Path
from typing import Any

import pytest

from iotdefender.alerts.outbox import AlertDelivery
from iotdefender.alerts.routes import AlertRoutes
from iotdefender.alerts.subscriptions import Webhook
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store import alert_outbox
from iotdefender.store.database import create_engine, writing
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.postgres

TOPIC = "arn:aws:sns:us-east-1:123456789012:ops"


def delivered_once_each(postgres, tmp_path: Path, alerts: int, delay_s: float, **delivery: Any) -> None:
    """``alerts`` outbox rows, two deliverers on their own engines, a receiver taking ``delay_s`` per alert."""
    url = postgres.create_database(f"claims{time.monotonic_ns()}")
    build_api(Settings(data_dir=tmp_path, database_url=url)).context.engine.dispose()  # migrated
    receiver = WebhookReceiver("s", delay_s=delay_s)
    routes = AlertRoutes({TOPIC: [Webhook(receiver.url, "s")]})
    engines = [create_engine(url), create_engine(url)]
    with writing(engines[0]) as conn:
        alert_outbox.insert_pending(conn, [{"target_arn": TOPIC, "destination": f"webhook:{receiver.url}",
                                            "message": json.dumps({"n": n}), "created_at": 1000.0}
                                           for n in range(alerts)])
    received: list[int] = []

    async def deliver() -> None:
        nodes = [AlertDelivery(engine, routes, "us-east-1", rate_per_destination=10_000.0, **delivery)
                 for engine in engines]
        tasks = [asyncio.create_task(node.run()) for node in nodes]
        deadline = time.monotonic() + 30
        while len(received) < alerts and time.monotonic() < deadline:
            try:
                received.append(receiver.received.get_nowait()["message"]["n"])
            except queue.Empty:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0 + delay_s)  # a second copy would arrive now
        while not receiver.received.empty():
            received.append(receiver.received.get_nowait()["message"]["n"])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run(deliver())
    finally:
        receiver.close()
        for engine in engines:
            engine.dispose()
    assert sorted(received) == list(range(alerts))  # every alert, each once


def test_two_nodes_claim_outbox_rows_so_no_alert_is_sent_twice(postgres, tmp_path: Path):
    delivered_once_each(postgres, tmp_path, alerts=300, delay_s=0.0)


def test_a_slow_destination_never_outlasts_the_claim(postgres, tmp_path: Path):
    """A round whose sends would run past its hold gives the rest back instead of racing the other
    node that may claim them once the hold expires."""
    delivered_once_each(postgres, tmp_path, alerts=12, delay_s=0.4, claim_hold_s=2.0, send_timeout_s=1.0)
