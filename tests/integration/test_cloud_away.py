"""Windows a device spent away, from the broker's events to the store: marked ``iotdefender/away``
beside their 0s (which the API lists), never listed themselves, and read back by training."""

from __future__ import annotations

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.cloud.service import CloudMetricsService
from iotdefender.metrics_catalog import AWAY_SERIES
from iotdefender.pipeline.batch_store import ignore_events
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.local_store import LocalBatchStore
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store import history

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"
SENT, SIZE = "aws:num-messages-sent", "aws:message-byte-size"


def test_away_windows_are_marked_stored_and_never_listed(tmp_path):
    api = build_api(Settings(data_dir=tmp_path))
    engine = api.context.engine
    api.invoke("CreateSecurityProfile", {"securityProfileName": "cloud", "behaviors": [
        {"name": "sent", "metric": SENT, "criteria": {"comparisonOperator": "less-than", "value": {"count": 100}}},
        {"name": "size", "metric": SIZE, "criteria": {"comparisonOperator": "less-than", "value": {"count": 1000}}}]})
    api.invoke("AttachSecurityProfile", {"securityProfileName": "cloud", "securityProfileTargetArn": ALL_THINGS})
    api.invoke("CreateThing", {"thingName": "on-the-shelf"})  # registered, never connected
    monitoring = MonitoringIndex(engine, api.context.arn(""))
    detection = DetectionService(engine, monitoring, AlertRoutes(), 172800.0)
    detection.load()
    now = [1000.1]
    cloud = CloudMetricsService(engine, monitoring, LocalBatchStore(engine, monitoring, detection, ignore_events),
                                window_s=1.0, clock=lambda: now[0])
    cloud.connect_attempt("visitor", "10.0.0.1", True, at=1000.2)
    cloud.message_sent("visitor", "devices/visitor/t", 40, at=1000.3)
    cloud.disconnect("visitor", at=1000.5)
    cloud.connect_attempt("stayer", "10.0.0.2", True, at=1000.2)
    now[0] = 1003.5  # windows [1000, 1001), [1001, 1002) and [1002, 1003) have closed
    cloud.close_due()

    def listed(thing: str, metric: str) -> list[tuple[float, object]]:
        out = api.invoke("ListMetricValues", {"thingName": thing, "metricName": metric, "startTime": 0,
                                              "endTime": 10**10})
        return [(d["timestamp"], d["value"]) for d in out["metricDatumList"]]

    assert listed("visitor", SENT) == [(1001.0, {"count": 1}), (1002.0, {"count": 0}), (1003.0, {"count": 0})]
    assert listed("on-the-shelf", SENT) == [(1001.0, {"count": 0}), (1002.0, {"count": 0}), (1003.0, {"count": 0})]
    with engine.connect() as conn:
        away = history.read_series(conn, AWAY_SERIES, 0, 10**10)
    marked = sorted((away.things[i], t) for i, t in zip(away.thing_index.tolist(), away.times.tolist()))
    # Connected in the first window, or throughout (stayer): not away.
    assert marked == [("on-the-shelf", 1001.0), ("on-the-shelf", 1002.0), ("on-the-shelf", 1003.0),
                      ("visitor", 1002.0), ("visitor", 1003.0)]
    # The service's own series are no metric's: the API lists nothing for their names.
    for name in (AWAY_SERIES, f"{SIZE}|smallest", f"{SENT}|any|IN"):
        assert listed("visitor", name) == [] and listed("on-the-shelf", name) == []
    assert listed("visitor", SIZE) == [(1001.0, {"count": 40})]
