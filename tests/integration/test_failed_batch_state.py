"""A batch whose transaction fails after evaluation leaves the engine's state as it was.

The real LocalBatchStore and DetectionService on SQLite; the database refuses the batch's alarm
states (a trigger, as a full disk or a constraint would), which happens after every report of the
batch was evaluated. Windows, fleet statistics and alarm states must be exactly as before, and
the next batch must give what it gives in a service that never saw the failed one.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import signal
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.api.app import ApiService
from iotdefender.engine.alarm import AlarmState, counting_ids
from iotdefender.pipeline.batch_store import BatchItem, ignore_events
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.local_store import LocalBatchStore
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store.availability import StoreUnavailable
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


def pipeline(data_dir: Path, **settings: Any) -> Pipeline:
    api = build_api(Settings(data_dir=data_dir, **settings))
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


@contextlib.contextmanager
def commit_answer_lost(pipeline: Pipeline, committed: bool) -> Iterator[None]:
    """The next COMMIT's answer never arrives, as when the connection to PostgreSQL drops while
    COMMIT is on its way: the server did (``committed``) or did not commit, and the caller cannot
    tell which. (The one fault SQLite cannot produce on its own; injected at the dialect.)"""
    dialect = pipeline.api.context.engine.dialect

    def lost(dbapi_connection: Any) -> None:
        del dialect.do_commit  # once
        if committed:
            dialect.do_commit(dbapi_connection)
        raise sqlite3.OperationalError("server closed the connection unexpectedly")

    dialect.do_commit = lost  # type: ignore[method-assign]
    try:
        yield
    finally:
        vars(dialect).pop("do_commit", None)


def datapoints(pipeline: Pipeline) -> int:
    with pipeline.api.context.engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM metric_values")).scalar_one()


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "not-committed"])
def test_a_batch_whose_commit_answer_was_lost_is_neither_repeated_nor_lost(tmp_path: Path, committed: bool) -> None:
    """The device was answered ServiceUnavailable and resends the same reports: whether or not the
    lost commit happened, the events, alarm states and datapoints end as if it had happened once."""
    failing, control = pipeline(tmp_path / "failing"), pipeline(tmp_path / "control")
    for each in (failing, control):
        assert each.store.store_batch(WARM_UP) == [("in-alarm", "p", "ports")]
    with commit_answer_lost(failing, committed), pytest.raises(StoreUnavailable):
        failing.store.store_batch(FAILED)

    expected = control.store.store_batch(FAILED)
    assert expected  # the batch changes alarms: a resend judged from stale memory would repeat them
    assert failing.store.store_batch(FAILED) == expected  # the resend: stored, or found stored
    assert failing.store.store_batch(NEXT) == control.store.store_batch(NEXT)
    assert events(failing) == events(control)
    assert datapoints(failing) == datapoints(control)
    assert alarm_states(failing) == alarm_states(control)
    if committed:  # windows and fleet statistics too: the lost commit's change set was applied
        assert failing.detection.evaluator == control.detection.evaluator


def alarm_states(pipeline: Pipeline) -> dict[Any, AlarmState]:
    """Without the violation ids, which the failing pipeline's discarded evaluation used up."""
    return {key: dataclasses.replace(state, violation_id=None)
            for key, state in pipeline.detection.evaluator.alarms()}


def test_a_sweep_whose_commit_answer_was_lost_does_not_invalidate_twice(tmp_path: Path) -> None:
    failing = pipeline(tmp_path)
    failing.store.store_batch(WARM_UP)  # d0 in alarm
    later = 900.0 + 172800.0 + 60  # d0 silent for the invalidation period
    with commit_answer_lost(failing, committed=True), pytest.raises(sa.exc.OperationalError):
        failing.detection.sweep(later)
    assert failing.detection.sweep(later + 1) is None  # the alarm states were reloaded: nothing due
    assert [e[2] for e in events(failing)] == ["in-alarm", "alarm-invalidated"]


def test_a_commit_a_stopped_backend_received_is_settled_once_that_backend_ended(tmp_path: Path, postgres) -> None:
    """PostgreSQL's backend stops (SIGSTOP: a frozen server, a hung disk) with the COMMIT received:
    the round trip bound (``--database-timeout``) gives the connection up, and the backend commits
    when it runs again. The device's resend, arriving while it is still stopped, must not be judged
    as if that commit had not happened (the transaction's own session is ended first)."""
    failing = pipeline(tmp_path / "failing", database_url=postgres.create_database(f"stopped{os.getpid()}"),
                       database_timeout=1.0)
    control = pipeline(tmp_path / "control")
    for each in (failing, control):
        assert each.store.store_batch(WARM_UP) == [("in-alarm", "p", "ports")]
    engine = failing.api.context.engine
    stopped: list[int] = []

    def stop_backend(conn: sa.Connection) -> None:  # SQLAlchemy's "commit": just before the COMMIT is sent
        if not stopped:
            stopped.append(conn.connection.dbapi_connection.info.backend_pid)  # type: ignore[union-attr]
            os.kill(stopped[0], signal.SIGSTOP)

    sa.event.listen(engine, "commit", stop_backend)
    try:
        with pytest.raises(StoreUnavailable):
            failing.store.store_batch(FAILED)
        sa.event.remove(engine, "commit", stop_backend)
        with pytest.raises(StoreUnavailable):  # the resend, while the backend is still stopped
            failing.store.store_batch(FAILED)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)

    expected = control.store.store_batch(FAILED)
    assert expected
    assert failing.store.store_batch(FAILED) == expected  # found stored: the stopped backend committed it
    assert failing.store.store_batch(NEXT) == control.store.store_batch(NEXT)
    assert events(failing) == events(control)
    assert datapoints(failing) == datapoints(control)
    assert alarm_states(failing) == alarm_states(control)
