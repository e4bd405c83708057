"""An alert to an SNS topic with no destination (no --sns-endpoint-url, not in
--alert-subscriptions) is not dropped silently: it is a dead letter with the reason, a counted
``no_destination`` outcome, and one warning per topic."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from iotdefender.alerts.outbox import AlertDelivery
from iotdefender.alerts.routes import Alert, AlertRoutes
from iotdefender.engine.alarm import AlarmState, EventType
from iotdefender.engine.evaluator import ViolationEvent
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store.database import writing

NOWHERE = "arn:aws:sns:us-east-1:123456789012:nowhere"


def event(n: int) -> ViolationEvent:
    return ViolationEvent(violation_id=f"{n:032x}", event_type=EventType.IN_ALARM, thing_name=f"t{n}",
                          profile_name="fleet", behavior={"name": "b", "metric": "aws:num-messages-sent"},
                          metric_value={"count": 9}, at=1000.0 + n, criteria_type="static", suppressed=False,
                          evidence={}, state=AlarmState())


def undeliverable_count() -> float:
    return REGISTRY.get_sample_value("iotdefender_alert_deliveries_total",
                                     {"kind": "sns", "outcome": "no_destination"}) or 0.0


def run_for(delivery: AlertDelivery, seconds: float) -> None:
    async def run() -> None:
        task = asyncio.create_task(delivery.run())
        await asyncio.sleep(seconds)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())


def test_alerts_to_a_topic_without_destination_are_dead_counted_and_logged_once(tmp_path: Path):
    engine = build_api(Settings(data_dir=tmp_path)).context.engine
    routes = AlertRoutes()  # the service started with neither --sns-endpoint-url nor --alert-subscriptions
    assert routes.undeliverable(NOWHERE) is not None and "--sns-endpoint-url" in routes.undeliverable(NOWHERE)
    assert AlertRoutes(sns_endpoint_url="http://sns.local").undeliverable(NOWHERE) is None
    try:
        with writing(engine) as conn:
            routes.enqueue(conn, [Alert(event(n), NOWHERE) for n in range(3)])
        before = undeliverable_count()
        delivery = AlertDelivery(engine, routes, "us-east-1")
        with capture_logs() as logs:
            deadline = time.monotonic() + 10
            while len(delivery.dead_letters()) < 3 and time.monotonic() < deadline:
                run_for(delivery, 0.3)
            with writing(engine) as conn:  # more alerts to the same topic: counted, not logged again
                routes.enqueue(conn, [Alert(event(n), NOWHERE) for n in range(3, 5)])
            while len(delivery.dead_letters()) < 5 and time.monotonic() < deadline:
                run_for(delivery, 0.3)
        dead = delivery.dead_letters()
        assert len(dead) == 5
        assert all(d["target_arn"] == NOWHERE and "has no destination" in d["last_error"] for d in dead)
        assert undeliverable_count() - before == 5
        warnings = [entry for entry in logs if entry["event"] == "alert_undeliverable"]
        assert len(warnings) == 1 and warnings[0]["topic"] == NOWHERE
        assert warnings[0]["log_level"] == "warning"
    finally:
        engine.dispose()
