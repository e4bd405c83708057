"""Cloud-side metrics across a restart of the service (one box, SQLite).

- aws:disconnect-duration: a device that stays away keeps counting from its disconnection,
  instead of starting again at 0 (which cleared its alarm while it was still offline, and kept it
  at 0 until it came back and left again).
- A graceful restart drops no window of the grid, idle or not: when no device had an event in
  the window open at the stop, nothing was kept of it, and the next start neither closed it nor
  the window it started in; the devices got no datapoint for either."""

from __future__ import annotations

from typing import Any

import pytest

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.cloud.service import CloudMetricsService
from iotdefender.pipeline.batch_store import ignore_events
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.local_store import LocalBatchStore
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store import disconnections, open_windows

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"
WINDOW_S = 60.0


def started(api: Any, clock: Any) -> CloudMetricsService:
    """The cloud-side closer of a freshly started process: its own detection state, loaded, and the
    windows and connections the last run left taken back."""
    engine = api.context.engine
    monitoring = MonitoringIndex(engine, api.context.arn(""))
    detection = DetectionService(engine, monitoring, AlertRoutes(), 172800.0)
    detection.load()
    cloud = CloudMetricsService(engine, monitoring, LocalBatchStore(engine, monitoring, detection, ignore_events),
                                window_s=WINDOW_S, clock=clock)
    cloud.resume()
    return cloud


def api_watching(tmp_path: Any, metric: str, thing: str) -> Any:
    """The API of a fresh data directory with one registered ``thing`` and a profile on every thing
    retaining ``metric`` (a behavior that never alarms: only the datapoints matter)."""
    api = build_api(Settings(data_dir=tmp_path))
    api.invoke("CreateSecurityProfile", {"securityProfileName": "watch", "behaviors": [
        {"name": "watched", "metric": metric,
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 2**40}}}]})
    api.invoke("AttachSecurityProfile", {"securityProfileName": "watch", "securityProfileTargetArn": ALL_THINGS})
    api.invoke("CreateThing", {"thingName": thing})
    return api


def test_a_device_away_keeps_its_disconnect_duration_across_a_restart(tmp_path):
    api = build_api(Settings(data_dir=tmp_path))
    api.invoke("CreateSecurityProfile", {"securityProfileName": "offline", "behaviors": [
        {"name": "away", "metric": "aws:disconnect-duration",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}}]})
    api.invoke("AttachSecurityProfile", {"securityProfileName": "offline", "securityProfileTargetArn": ALL_THINGS})
    for thing in ("gone", "steady"):
        api.invoke("CreateThing", {"thingName": thing})
    now = [1000 * WINDOW_S + 1]
    clock = lambda: now[0]  # noqa: E731
    cloud = started(api, clock)
    cloud.connect_attempt("gone", "10.0.0.1", True)
    cloud.connect_attempt("steady", "10.0.0.2", True)
    now[0] += 9
    cloud.disconnect("gone")  # at 1000 windows + 10 s
    for _ in range(6):  # windows 1000-1005 close: 0, 1, 2, 3, 4, 5 minutes away
        now[0] += WINDOW_S
        cloud.close_due()

    def away(thing: str) -> list[int]:
        out = api.invoke("ListMetricValues", {"thingName": thing, "metricName": "aws:disconnect-duration",
                                              "startTime": 0, "endTime": 10**10})
        return [d["value"]["count"] for d in out["metricDatumList"]]

    def events() -> list[str]:
        out = api.invoke("ListViolationEvents", {"startTime": 0, "endTime": 10**10})
        return [f"{e['thingName']}:{e['violationEventType']}" for e in out["violationEvents"]]

    assert away("gone") == [0, 1, 2, 3, 4, 5]
    assert events() == ["gone:in-alarm"]

    cloud = started(api, clock)  # a restart (the same after kill -9: the state is kept per window)
    cloud.connect_attempt("steady", "10.0.0.2", True)  # its broker restarted too: steady reconnects
    now[0] += WINDOW_S
    cloud.close_due()
    assert away("gone") == [0, 1, 2, 3, 4, 5, 6]  # not 0: still offline
    assert away("steady")[-1] == 0
    assert events() == ["gone:in-alarm"]  # no alarm-cleared while it is away

    cloud.connect_attempt("gone", "10.0.0.1", True)  # back
    now[0] += WINDOW_S
    cloud.close_due()
    cloud = started(api, clock)  # restarted again: both reconnect to its broker
    for thing in ("gone", "steady"):
        cloud.connect_attempt(thing, "10.0.0.3", True)
    now[0] += WINDOW_S
    cloud.close_due()
    assert away("gone") == [0, 1, 2, 3, 4, 5, 6, 0, 0]
    assert sorted(events()) == ["gone:alarm-cleared", "gone:in-alarm"]
    with api.context.engine.connect() as conn:
        assert disconnections.load(conn) == {}


def attempts(api: Any, thing: str) -> list[tuple[int, int]]:
    out = api.invoke("ListMetricValues", {"thingName": thing, "metricName": "aws:num-connection-attempts",
                                          "startTime": 0, "endTime": 10**10})
    return [(round(d["timestamp"] / WINDOW_S), d["value"]["count"]) for d in out["metricDatumList"]]


@pytest.mark.parametrize("restart_after", [10.0, WINDOW_S], ids=["within-the-window", "after-its-end"])
def test_an_idle_window_at_a_graceful_stop_is_closed_for_every_device(tmp_path, restart_after):
    api = api_watching(tmp_path, "aws:num-connection-attempts", "idle")
    now = [1000 * WINDOW_S + 1]
    clock = lambda: now[0]  # noqa: E731
    cloud = started(api, clock)
    cloud.connect_attempt("idle", "10.0.0.1", True)
    now[0] += WINDOW_S
    cloud.close_due()  # window 1000: its connection
    now[0] += WINDOW_S
    cloud.close_due()  # window 1001: idle, 0
    now[0] += 20
    cloud.suspend()  # a graceful stop 21 s into window 1002, in which nothing happened
    now[0] += restart_after
    cloud = started(api, clock)
    with api.context.engine.connect() as conn:
        assert open_windows.take_open_window(conn) is None  # taken
    now[0] = 1004 * WINDOW_S + 1
    cloud.close_due()
    # Datapoints are at each window's end: 1001 for window 1000, ... 1004 for window 1003.
    assert attempts(api, "idle") == [(1001, 1), (1002, 0), (1003, 0), (1004, 0)]


def test_a_registered_thing_that_never_connected_counts_its_refused_connects_in_the_first_window(tmp_path):
    """Refused CONNECTs of unknown names are held for a bounded number of names a window; the
    things registered are known from the start, not only from the first window's close (an
    outside-in test: a registered thing got 0 authorization failures in the first window after a
    restart, behind 160,000 refused CONNECTs of forged names)."""
    api = api_watching(tmp_path, "aws:num-authorization-failures", "known-a")
    now = [1000 * WINDOW_S + 1]
    cloud = started(api, lambda: now[0])
    cloud.aggregator.max_unknown_refused = 3
    for n in range(10):
        cloud.connect_attempt(f"forged-{n}", "10.9.9.9", False)
    for _ in range(3):
        cloud.connect_attempt("known-a", "10.9.9.9", False)
    now[0] += WINDOW_S
    cloud.close_due()
    out = api.invoke("ListMetricValues", {"thingName": "known-a", "metricName": "aws:num-authorization-failures",
                                          "startTime": 0, "endTime": 10**10})
    assert [d["value"]["count"] for d in out["metricDatumList"]] == [3]
