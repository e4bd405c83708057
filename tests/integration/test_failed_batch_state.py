"""A batch whose transaction fails after evaluation leaves the engine's state as it was.

The real LocalBatchStore and DetectionService on SQLite; the database refuses the batch's alarm
states (a trigger, as a full disk or a constraint would), which happens after every report of the
batch was evaluated. Windows, fleet statistics and alarm states must be exactly as before, and
the next batch must give what it gives in a service that never saw the failed one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.api.app import ApiService
from iotdefender.engine.alarm import counting_ids
from iotdefender.pipeline.batch_store import BatchItem, ignore_events
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.local_store import LocalBatchStore
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store.database import writing

BEHAVIORS = [
    {"name": "ports", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]}}},
    {"name": "bytes", "metric": "aws:all-bytes-out",  # a window: summed over durationSeconds
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 1000}, "durationSeconds": 300}},
    {"name": "fleet", "metric": "aws:all-bytes-in",  # fleet statistics
     "criteria": {"comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p50"},
                  "durationSeconds": 300}},
]


@dataclass
class Pipeline:
    api: ApiService
    detection: DetectionService
    store: LocalBatchStore


def pipeline(data_dir: Path) -> Pipeline:
    api = build_api(Settings(data_dir=data_dir))
    engine = api.context.engine
    api.invoke("CreateSecurityProfile", {"securityProfileName": "p", "behaviors": BEHAVIORS})
    api.invoke("AttachSecurityProfile", {"securityProfileName": "p",
                                         "securityProfileTargetArn": api.context.arn("all/things")})
    monitoring = MonitoringIndex(engine, api.context.arn(""))
    detection = DetectionService(engine, monitoring, AlertRoutes(), 172800.0, new_id=counting_ids())
    detection.load()
    return Pipeline(api, detection, LocalBatchStore(engine, monitoring, detection, ignore_events))


def report(thing: str, at: float, ports: list[int], bytes_out: int, bytes_in: int) -> BatchItem:
    return (thing, {"aws:listening-tcp-ports": {"ports": ports}, "aws:all-bytes-out": {"count": bytes_out},
                    "aws:all-bytes-in": {"count": bytes_in}}, at, int(at))


# Window 3 of the statistics (900-1200 s): six devices, the fleet's p50 of bytes in is 25; d0 in alarm.
WARM_UP = [report(f"d{i}", 900.0 + i, [22] if i == 0 else [443], 600, 10 * i) for i in range(6)]
# Window 4: d0 would clear, d1's window would pass 1000 bytes, d2 would raise on the fleet's p50.
FAILED = [report("d0", 1210.0, [443], 10, 10), report("d1", 1211.0, [443], 600, 10),
          report("d2", 1212.0, [443], 10, 10_000), report("d3", 1213.0, [22], 10, 10)]
# Each change of the failed batch, had it stuck, would show here: d0 raising again, d1 passing
# 1000 bytes, d2 not raising (already in alarm), d3 clearing.
NEXT = [report("d0", 1220.0, [22], 10, 10), report("d1", 1221.0, [443], 600, 10),
        report("d2", 1222.0, [443], 10, 10_000), report("d3", 1223.0, [443], 10, 10)]


def refuse_alarm_states(pipeline: Pipeline, refuse: bool) -> None:
    with writing(pipeline.api.context.engine) as conn:
        if refuse:
            conn.execute(sa.text("CREATE TRIGGER refuse BEFORE INSERT ON alarm_states "
                                 "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"))
        else:
            conn.execute(sa.text("DROP TRIGGER refuse"))


def events(pipeline: Pipeline) -> list[tuple[Any, ...]]:
    out = pipeline.api.invoke("ListViolationEvents", {"startTime": 0, "endTime": 10**10})
    return [(e["thingName"], e["behavior"]["name"], e["violationEventType"], e.get("metricValue"),
             e["violationEventTime"]) for e in out["violationEvents"]]


def test_a_failed_batch_leaves_windows_statistics_and_alarms_as_they_were(tmp_path: Path) -> None:
    failing, control = pipeline(tmp_path / "failing"), pipeline(tmp_path / "control")
    for each in (failing, control):
        assert each.store.store_batch(WARM_UP) == [("in-alarm", "p", "ports")]
    before = copy.deepcopy(failing.detection.evaluator)

    refuse_alarm_states(failing, True)
    with pytest.raises(sa.exc.IntegrityError):
        failing.store.store_batch(FAILED)
    assert failing.detection.evaluator == before  # windows, statistics and alarm states: untouched
    refuse_alarm_states(failing, False)

    expected = control.store.store_batch(NEXT)
    assert expected == [("in-alarm", "p", "fleet")]  # d2; d0 is still in alarm, d1's window holds 600 bytes
    assert failing.store.store_batch(NEXT) == expected
    assert events(failing) == events(control)
