"""Cloud-side windows closed on one thread while events arrive on another (one box, SQLite).

The HTTP broker-event intake applies events on a worker thread, the plugin's batches on the event
loop, and the windows are closed on a third thread. An event is placed in two steps: is its window
closed yet, then into that window. A window taken between the two lost the event (a full run once
read 0 messages for a flooder's window instead of 80). The closer below is started exactly between
the two steps, from a hook on the devices seen, which ``Aggregator`` updates in between."""

from __future__ import annotations

import threading
from typing import Any

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.cloud.service import CloudMetricsService
from iotdefender.pipeline.batch_store import ignore_events
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.local_store import LocalBatchStore
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.service import build_api
from iotdefender.settings import Settings

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"
WINDOW_S = 60.0
FIRST = 1000  # the window the events are stamped in


class _CloseMidway(set):  # type: ignore[type-arg]
    """The devices seen; the first time one is added from the main thread after ``arm``, the
    windows are closed on another thread, given a second to finish before the event goes on."""

    closer: threading.Thread | None = None
    armed: Any = None

    def add(self, item: Any) -> None:
        if self.armed is not None and self.closer is None and threading.current_thread() is threading.main_thread():
            self.closer = threading.Thread(target=self.armed)
            self.closer.start()
            self.closer.join(1.0)  # with the fix it waits for the event: the join times out
        super().add(item)


def test_an_event_stamped_at_a_windows_end_counts_in_it_while_another_thread_closes_it(tmp_path):
    api = build_api(Settings(data_dir=tmp_path))
    api.invoke("CreateSecurityProfile", {"securityProfileName": "watch", "behaviors": [
        {"name": "sent", "metric": "aws:num-messages-sent",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 2**40}}}]})
    api.invoke("AttachSecurityProfile", {"securityProfileName": "watch", "securityProfileTargetArn": ALL_THINGS})
    api.invoke("CreateThing", {"thingName": "flooder"})
    engine = api.context.engine
    monitoring = MonitoringIndex(engine, api.context.arn(""))
    detection = DetectionService(engine, monitoring, AlertRoutes(), 172800.0)
    detection.load()
    now = [FIRST * WINDOW_S + 1]
    cloud = CloudMetricsService(engine, monitoring, LocalBatchStore(engine, monitoring, detection, ignore_events),
                                window_s=WINDOW_S, clock=lambda: now[0])
    seen = _CloseMidway()
    cloud.aggregator.seen = seen
    end = (FIRST + 1) * WINDOW_S
    for _ in range(79):
        cloud.message_sent("flooder", "data/flooder", 10, at=end - 30)
    now[0] = end + 0.1  # the window has ended; the last message was stamped by the broker before
    seen.armed = cloud.close_due
    cloud.message_sent("flooder", "data/flooder", 10, at=end - 0.001)
    assert seen.closer is not None
    seen.closer.join(10)
    assert not seen.closer.is_alive()
    now[0] = end + WINDOW_S + 0.1
    cloud.close_due()  # the next window: nothing in it

    out = api.invoke("ListMetricValues", {"thingName": "flooder", "metricName": "aws:num-messages-sent",
                                          "startTime": 0, "endTime": 10**10})
    counts = {d["timestamp"]: d["value"]["count"] for d in out["metricDatumList"]}
    assert counts == {end: 80, end + WINDOW_S: 0}
