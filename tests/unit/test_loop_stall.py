"""A stalled event loop, and a slow store transaction, are logged (warnings), not only measured:
an outside-in run saw a service answer no report for seconds with nothing in its log."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from iotdefender import loop_stall
from iotdefender.pipeline import transaction_metrics


def test_a_loop_blocked_for_longer_than_the_warning_is_logged_with_its_lag() -> None:
    async def scenario() -> None:
        watcher = asyncio.create_task(loop_stall.watch(interval_s=0.02, warn_after_s=0.5))
        await asyncio.sleep(0.1)  # some ordinary ticks
        time.sleep(0.8)  # noqa: ASYNC251 - the stall under test: nothing else runs meanwhile
        await asyncio.sleep(0.1)
        watcher.cancel()

    observed = REGISTRY.get_sample_value("iotdefender_event_loop_lag_seconds_count") or 0.0
    with capture_logs() as logs:
        asyncio.run(scenario())
    stalled = [line for line in logs if line["event"] == "event_loop_stalled"]
    assert len(stalled) == 1, logs
    assert stalled[0]["log_level"] == "warning" and stalled[0]["lag_s"] >= 0.7
    assert (REGISTRY.get_sample_value("iotdefender_event_loop_lag_seconds_count") or 0.0) - observed >= 3


def test_a_store_transaction_of_a_second_or_more_is_logged() -> None:
    with capture_logs() as logs:
        transaction_metrics.observe(0.2, 5)
        transaction_metrics.observe(1.4, 7)
    slow = [line for line in logs if line["event"] == "transaction_slow"]
    assert [(line["seconds"], line["reports"]) for line in slow] == [(1.4, 7)]
