"""Cloud-side windows: one device's window that the store refuses costs the others nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.pipeline.batch_store import BatchItem, ignore_events
from iotdefender.cloud.service import CloudMetricsService
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.local_store import LocalBatchStore
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.service import build_api
from iotdefender.settings import Settings

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"


class Refusing:
    """The real store, refusing any batch that holds ``thing`` (as a driver refuses a bad value)."""

    def __init__(self, store: LocalBatchStore, thing: str) -> None:
        self.store = store
        self.thing = thing

    def store_batch(self, items: Sequence[BatchItem]) -> Any:
        if any(item[0] == self.thing for item in items):
            raise TypeError("Integer exceeds 64-bit range")
        return self.store.store_batch(items)


def cloud_metrics(tmp_path: Any, wrap: Callable[[LocalBatchStore], Any], clock: Callable[[], float]
                  ) -> tuple[Any, Any, CloudMetricsService]:
    """A service with one cloud-side profile on every thing, the real store wrapped by ``wrap``, and
    a cloud-side closer over it with windows of 1 s."""
    api = build_api(Settings(data_dir=tmp_path))
    engine = api.context.engine
    api.invoke("CreateSecurityProfile", {"securityProfileName": "cloud", "behaviors": [
        {"name": "attempts", "metric": "aws:num-connection-attempts",
         "criteria": {"comparisonOperator": "greater-than", "value": {"count": 100}}}]})
    api.invoke("AttachSecurityProfile", {"securityProfileName": "cloud", "securityProfileTargetArn": ALL_THINGS})
    monitoring = MonitoringIndex(engine, api.context.arn(""))
    detection = DetectionService(engine, monitoring, AlertRoutes(), 172800.0)
    detection.load()
    store = wrap(LocalBatchStore(engine, monitoring, detection, ignore_events))
    return api, store, CloudMetricsService(engine, monitoring, store, window_s=1.0, clock=clock)


def test_a_refused_window_is_isolated(tmp_path):
    now = [1000.2]
    api, _, cloud = cloud_metrics(tmp_path, lambda store: Refusing(store, "c-2"), lambda: now[0])
    for client in ("c-1", "c-2", "c-3"):
        cloud.connect_attempt(client, "10.0.0.1", True)
    now[0] = 1001.5  # the window [1000, 1001) has closed
    assert cloud.close_due() == 2  # c-1 and c-3 stored; c-2 set aside, not everyone

    def stored(thing: str) -> list[Any]:
        out = api.invoke("ListMetricValues", {"thingName": thing, "metricName": "aws:num-connection-attempts",
                                              "startTime": 0, "endTime": 10**10})
        return [d["value"] for d in out["metricDatumList"]]

    assert stored("c-1") == [{"count": 1}] and stored("c-3") == [{"count": 1}] and stored("c-2") == []


class Counting:
    """The real store, recording the size of every batch it is given."""

    def __init__(self, store: LocalBatchStore) -> None:
        self.store = store
        self.sizes: list[int] = []

    def store_batch(self, items: Sequence[BatchItem]) -> Any:
        self.sizes.append(len(items))
        return self.store.store_batch(items)


def test_a_fleet_window_is_stored_in_transactions_of_at_most_the_batch_limit(tmp_path):
    """One transaction for the whole fleet's window held the detection worker, and every device
    report waiting behind it, for seconds at fleet size."""
    from iotdefender.pipeline.batch_store import BATCH_MAX

    now = [1000.2]
    _, store, cloud = cloud_metrics(tmp_path, Counting, lambda: now[0])
    devices = 2 * BATCH_MAX + 5
    for n in range(devices):
        cloud.connect_attempt(f"c-{n}", "10.0.0.1", True)
    now[0] = 1001.5
    assert cloud.close_due() == devices
    assert store.sizes == [BATCH_MAX, BATCH_MAX, 5]


def test_a_window_close_asks_the_registry_in_a_few_statements_whatever_the_fleet(tmp_path):
    """Every registered device gets its window's datapoints (an idle one its 0). The registry's
    facts of devices the monitoring cache has not seen since the last change of the control plane
    were asked one device at a time (a connection and two queries each: at a fleet's size, longer
    than the window), and the registry was read whole, attributes and all, in pages."""
    import sqlalchemy as sa

    now = [1000.2]
    api, _, cloud = cloud_metrics(tmp_path, lambda store: store, lambda: now[0])
    registered = 400
    for n in range(registered):
        api.invoke("CreateThing", {"thingName": f"idle-{n:03d}", "attributePayload": {"attributes": {"site": "x"}}})
    for client in ("busy-1", "busy-2"):
        cloud.connect_attempt(client, "10.0.0.1", True)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(api.context.engine, "before_cursor_execute", count)
    try:
        now[0] = 1001.5
        assert cloud.close_due() == registered + 2
    finally:
        sa.event.remove(api.context.engine, "before_cursor_execute", count)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) < 20, f"{len(reads)} reads for {registered} devices"  # 3 here, 803 before
    out = api.invoke("ListMetricValues", {"thingName": "idle-007", "metricName": "aws:num-connection-attempts",
                                          "startTime": 0, "endTime": 10**10})
    assert [d["value"] for d in out["metricDatumList"]] == [{"count": 0}]
