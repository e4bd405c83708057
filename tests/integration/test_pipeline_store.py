"""The in-process batch unit of work on a real SQLite database: alert rows carry the target of the
profile that raised the event, violation counters are counted once, and the detection lock is
released and memory left alone when a transaction fails."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.alerts.subscriptions import Webhook
from iotdefender.pipeline.batch_store import EventSummary
from iotdefender.pipeline.counters import COUNTERS, counting
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.local_store import LocalBatchStore
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.engine.alarm import EventType
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store.schema import alert_outbox

ACCOUNT = "123456789012"
TOPIC = f"arn:aws:sns:us-east-1:{ACCOUNT}:ops"
ALL_THINGS = f"arn:aws:iot:us-east-1:{ACCOUNT}:all/things"
PORTS = "aws:num-listening-tcp-ports"


def violating(count: int = 5) -> dict[str, dict[str, Any]]:
    return {PORTS: {"count": count}}


class Pipeline:
    def __init__(self, tmp_path: Any, profile: str) -> None:
        self.api = build_api(Settings(data_dir=tmp_path))
        self.engine = self.api.context.engine
        self.profile = profile
        self.api.invoke("CreateSecurityProfile", {
            "securityProfileName": profile,
            "behaviors": [{"name": "few-ports", "metric": PORTS,
                           "criteria": {"comparisonOperator": "less-than", "value": {"count": 3},
                                        "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1}}],
            "alertTargets": {"SNS": {"alertTargetArn": TOPIC, "roleArn": f"arn:aws:iam::{ACCOUNT}:role/r"}}})
        self.api.invoke("AttachSecurityProfile", {"securityProfileName": profile,
                                                  "securityProfileTargetArn": ALL_THINGS})
        self.monitoring = MonitoringIndex(self.engine, self.api.context.arn(""))
        self.detection = DetectionService(self.engine, self.monitoring,
                                          AlertRoutes({TOPIC: [Webhook("http://127.0.0.1:9/hook", "s")]}), 3600.0)
        self.detection.load()
        self.heard: list[list[EventSummary]] = []
        self.woken = 0
        self.store = LocalBatchStore(self.engine, self.monitoring, self.detection, self._listener())

    def _listener(self) -> Any:
        counted = counting(self._wake)

        def listener(events: list[EventSummary]) -> None:
            self.heard.append(events)
            counted(events)

        return listener

    def _wake(self) -> None:
        self.woken += 1

    def outbox(self) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            return [(r.target_arn, r.destination) for r in conn.execute(alert_outbox.select().order_by(alert_outbox.c.id))]


def counted(kind: EventType, profile: str) -> float:
    return COUNTERS[kind].labels(profile, "few-ports")._value.get()


def test_alert_rows_carry_the_target_of_the_profile_that_raised_the_event(tmp_path):
    pipeline = Pipeline(tmp_path, "alerting")
    events = pipeline.store.store_batch([("dev-1", violating(), time.time(), 1)])
    assert events == [("in-alarm", "alerting", "few-ports")]
    assert pipeline.outbox() == [(TOPIC, "webhook:http://127.0.0.1:9/hook")]


def test_an_invalidated_alarm_is_alerted_to_its_profile_target_after_a_detach(tmp_path):
    """The sweep's events belong to a profile that no longer monitors the thing: the target still
    comes from that profile (as detection knows it), not from a second lookup by alerts."""
    pipeline = Pipeline(tmp_path, "detached")
    pipeline.store.store_batch([("dev-1", violating(), time.time(), 1)])
    pipeline.api.invoke("DetachSecurityProfile", {"securityProfileName": "detached",
                                                  "securityProfileTargetArn": ALL_THINGS})
    pipeline.store.invalidate()
    assert pipeline.store.sweep(time.time()) == [("alarm-invalidated", "detached", "few-ports")]
    assert pipeline.outbox() == [(TOPIC, "webhook:http://127.0.0.1:9/hook")] * 2


def test_violation_counters_are_counted_once_per_event(tmp_path):
    pipeline = Pipeline(tmp_path, "counted-once")
    before = counted(EventType.IN_ALARM, "counted-once"), counted(EventType.CLEARED, "counted-once")
    pipeline.store.store_batch([("dev-1", violating(), time.time(), 1), ("dev-2", violating(), time.time(), 1)])
    pipeline.store.store_batch([("dev-1", violating(0), time.time(), 2)])
    assert counted(EventType.IN_ALARM, "counted-once") - before[0] == 2
    assert counted(EventType.CLEARED, "counted-once") - before[1] == 1
    assert pipeline.woken == 2  # the alert loop is woken once per batch with events
    pipeline.store.store_batch([("dev-3", violating(0), time.time(), 1)])
    assert pipeline.woken == 2 and pipeline.heard[-1] == []


def test_a_failed_transaction_releases_the_detection_lock_and_leaves_memory_alone(tmp_path):
    pipeline = Pipeline(tmp_path, "failing")
    with pytest.raises(RuntimeError):
        with pipeline.detection.transaction() as detection:
            detection.evaluate_in([("dev-1", violating(), time.time())])
            assert detection.events  # evaluated: an in-alarm event is pending
            raise RuntimeError("the batch failed before its commit")
    assert pipeline.detection.evaluator.remembered() == 0 and pipeline.detection.evaluator.alarms() == []
    assert pipeline.outbox() == []  # rolled back with the transaction

    stored: list[Any] = []  # from another thread, so that a lock still held fails instead of hanging
    worker = threading.Thread(target=lambda: stored.append(
        pipeline.store.store_batch([("dev-1", violating(), time.time(), 1)])), daemon=True)
    worker.start()
    worker.join(10)
    assert stored == [[("in-alarm", "failing", "few-ports")]]
    assert len(pipeline.detection.evaluator.alarms()) == 1


def test_only_committed_transactions_are_timed_each_as_reports_or_a_window(tmp_path):
    """``iotdefender_detect_transaction_*``: a batch of reports is observed once with its report
    count; ``iotdefender_cloud_window_transaction_*``: a cloud-side window's batch (no report id)
    with its things; a transaction that fails is not observed."""
    pipeline = Pipeline(tmp_path, "timed")
    timed: list[tuple[float, int, int]] = []
    store = LocalBatchStore(pipeline.engine, pipeline.monitoring, pipeline.detection, lambda events: None,
                            on_transaction=lambda seconds, reports, windows: timed.append((seconds, reports, windows)))
    store.store_batch([("dev-1", violating(), time.time(), 1), ("dev-2", violating(), time.time(), 1)])
    store.store_batch([("dev-3", violating(), time.time(), None), ("dev-5", violating(), time.time(), None)])
    with pytest.raises(Exception):
        store.store_batch([("dev-4", {PORTS: {"count": object()}}, time.time(), 1)])  # not storable
    assert [(reports, windows) for _, reports, windows in timed] == [(2, 0), (0, 2)]
    assert all(0 < seconds < 10 for seconds, _, _ in timed)


def test_a_things_partition_is_computed_once_per_transaction_for_its_rows_and_its_states(tmp_path):
    """A report's row and its thing's alarm states both carry the thing's partition; hashing the
    name (BLAKE2b, ~1.4 µs) for each of them cost a single box a measurable share of its ingest
    (bench/README.md, "A regression found and fixed")."""
    pipeline = Pipeline(tmp_path, "hashing")
    asked: list[str] = []
    partition_of = pipeline.detection.partition_of

    def counted_partition_of(thing: str) -> int:
        asked.append(thing)
        return partition_of(thing)

    pipeline.detection.partition_of = counted_partition_of
    events = pipeline.store.store_batch([("dev-1", violating(), time.time(), 1), ("dev-2", violating(), time.time(), 1)])
    assert len(events) == 2  # an alarm state changed for each: rows and states of both stored
    assert sorted(asked) == ["dev-1", "dev-2"]


def test_alarms_of_a_removed_behavior_are_invalidated_with_the_behavior_as_it_was(tmp_path):
    """The profile no longer has the behavior, so the invalidation events carry the one their
    alarms were raised under (read for all of them at once)."""
    pipeline = Pipeline(tmp_path, "removed")
    things = [f"dev-{n}" for n in range(30)]
    pipeline.store.store_batch([(thing, violating(), time.time(), 1) for thing in things])
    pipeline.api.invoke("UpdateSecurityProfile", {"securityProfileName": "removed", "behaviors": []})
    pipeline.store.invalidate()
    assert pipeline.store.sweep(time.time()) == [("alarm-invalidated", "removed", "few-ports")] * len(things)
    for thing in things[:3]:
        (_, invalidated) = pipeline.api.invoke("ListViolationEvents", {
            "startTime": 0, "endTime": time.time() + 60, "thingName": thing})["violationEvents"]
        assert invalidated["violationEventType"] == "alarm-invalidated"
        assert invalidated["behavior"]["metric"] == PORTS
        assert invalidated["behavior"]["criteria"]["value"] == {"count": 3}


def test_a_sweep_drops_the_windows_of_devices_silent_past_the_horizon(tmp_path):
    pipeline = Pipeline(tmp_path, "windows")
    pipeline.api.invoke("UpdateSecurityProfile", {"securityProfileName": "windows", "behaviors": [
        {"name": "bytes", "metric": "aws:all-bytes-out",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 1000}, "durationSeconds": 300}}]})
    pipeline.store.invalidate()
    start = time.time()
    pipeline.store.store_batch([("quiet", {"aws:all-bytes-out": {"count": 10}}, start, 1)])
    assert pipeline.detection.evaluator.things_held() == {"quiet"}
    pipeline.store.sweep(start + 60)  # within the hour: kept
    assert pipeline.detection.evaluator.things_held() == {"quiet"}
    pipeline.store.sweep(start + 3700)  # an hour after the last sweep that dropped any: past the horizon
    assert pipeline.detection.evaluator.things_held() == set()
