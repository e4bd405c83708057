"""Outbox rows whose destination this node cannot send as it was routed.

- A kind of destination this release does not know (a newer release wrote it into the shared
  outbox during a rolling upgrade, as ``none:`` once was new) is not claimed here, so a node that
  knows it is never held up: not retried as a webhook and dead-lettered with a meaningless reason.
- A webhook no longer in this node's ``--alert-subscriptions`` (the file changed since the alert was
  routed) fails with a reason that says so, and is retried like any failed send (the second test
  shows that retry; it passed on the code before too, with a meaningless reason).
The rows beside them are delivered as usual.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import sqlalchemy as sa

from iotdefender.alerts.outbox import AlertDelivery
from iotdefender.alerts.routes import AlertRoutes
from iotdefender.alerts.subscriptions import Webhook
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store import alert_outbox
from iotdefender.store.database import writing
from tests.integration.test_alert_no_destination import run_for
from tests.support.webhook import WebhookReceiver

TOPIC = "arn:aws:sns:us-east-1:123456789012:ops"


def rows_by_destination(engine: sa.Engine) -> dict[str, sa.Row]:
    with engine.connect() as conn:
        return {row.destination: row for row in conn.execute(sa.select(alert_outbox.alert_outbox))}


def test_a_newer_kind_is_left_for_a_node_that_knows_it_and_a_removed_webhook_says_so(tmp_path: Path):
    engine = build_api(Settings(data_dir=tmp_path)).context.engine
    receiver = WebhookReceiver("s")
    gone = "http://127.0.0.1:9/removed-hook"
    routes = AlertRoutes({TOPIC: [Webhook(receiver.url, "s")]})
    destinations = ["pager:oncall-7", f"webhook:{gone}", f"webhook:{receiver.url}", "pager:oncall-8"]
    try:
        with writing(engine) as conn:
            alert_outbox.insert_pending(conn, [{"target_arn": TOPIC, "destination": destination,
                                                "message": json.dumps({"n": n}), "created_at": 1000.0}
                                               for n, destination in enumerate(destinations)])
        delivery = AlertDelivery(engine, routes, "us-east-1", retry_base_s=60.0)
        started = time.time()
        deadline = time.monotonic() + 15
        while receiver.received.empty() and time.monotonic() < deadline:
            run_for(delivery, 0.3)
        run_for(delivery, 0.6)  # a round more
        assert receiver.received.get_nowait()["message"] == {"n": 2}  # the row beside them: delivered
        rows = rows_by_destination(engine)

        for destination in ("pager:oncall-7", "pager:oncall-8"):  # never claimed: as they were, due now
            row = rows[destination]
            assert (row.status, row.attempts, row.last_error) == ("pending", 0, None), row
            assert row.next_attempt_at < started

        removed = rows[f"webhook:{gone}"]
        assert (removed.status, removed.attempts) == ("pending", 1)  # retried (a node that has it may send it)
        assert f"webhook {gone} is not in this node's --alert-subscriptions" in removed.last_error
        assert "StopIteration" not in removed.last_error
        assert rows[f"webhook:{receiver.url}"].status == "delivered"
        assert receiver.received.empty()

        # The same deliverer run again (its HTTP client made at its first webhook, closed at the end
        # of each run) sends the next alert too.
        with writing(engine) as conn:
            alert_outbox.insert_pending(conn, [{"target_arn": TOPIC, "destination": f"webhook:{receiver.url}",
                                                "message": json.dumps({"n": 9}), "created_at": 1001.0}])
        run_for(delivery, 1.0)
        assert receiver.received.get(timeout=5)["message"] == {"n": 9}
    finally:
        receiver.close()
        engine.dispose()


def test_a_node_with_the_webhook_sends_what_a_node_without_it_failed(tmp_path: Path):
    """A webhook row that one node's file lacks stays an ordinary pending row: a node whose
    --alert-subscriptions has the hook sends it when its retry is due, once."""
    engine = build_api(Settings(data_dir=tmp_path)).context.engine
    receiver = WebhookReceiver("s")
    try:
        with writing(engine) as conn:
            alert_outbox.insert_pending(conn, [{"target_arn": TOPIC, "destination": f"webhook:{receiver.url}",
                                                "message": json.dumps({"n": 0}), "created_at": 1000.0}])
        older = AlertDelivery(engine, AlertRoutes(), "us-east-1", retry_base_s=60.0)  # its file lacks the hook
        run_for(older, 0.5)
        with writing(engine) as conn:  # as if the retry were due now
            conn.execute(alert_outbox.alert_outbox.update().values(next_attempt_at=0.0))
        newer = AlertDelivery(engine, AlertRoutes({TOPIC: [Webhook(receiver.url, "s")]}), "us-east-1")
        run_for(newer, 1.0)
        assert receiver.received.get(timeout=5)["message"] == {"n": 0}
        time.sleep(0.5)
        assert receiver.received.empty()  # once
        assert rows_by_destination(engine)[f"webhook:{receiver.url}"].status == "delivered"
    finally:
        receiver.close()
        engine.dispose()
