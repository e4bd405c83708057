"""ListActiveViolations lists by start time (oldest first; the console's newest first), and its
pages neither skip nor repeat a violation. Listed by violation id, they looked shuffled."""

from __future__ import annotations

import random
from pathlib import Path

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.pipeline.batch_store import ignore_events
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.local_store import LocalBatchStore
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.service import build_api
from iotdefender.settings import Settings

PORTS = {"name": "ports", "metric": "aws:listening-tcp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]}}}


def test_active_violations_come_by_start_time_across_pages(tmp_path: Path) -> None:
    api = build_api(Settings(data_dir=tmp_path))
    engine = api.context.engine
    api.invoke("CreateSecurityProfile", {"securityProfileName": "p", "behaviors": [PORTS]})
    api.invoke("AttachSecurityProfile", {"securityProfileName": "p",
                                         "securityProfileTargetArn": api.context.arn("all/things")})
    monitoring = MonitoringIndex(engine, api.context.arn(""))
    detection = DetectionService(engine, monitoring, AlertRoutes(), 172800.0)  # random ids, as live
    detection.load()
    store = LocalBatchStore(engine, monitoring, detection, ignore_events)
    starts = {f"t{i:02d}": 1000.0 + i for i in range(23)}
    things = list(starts)
    random.Random(7).shuffle(things)  # raised in another order than their start times sort
    for thing in things:
        store.store_batch([(thing, {"aws:listening-tcp-ports": {"ports": [22]}}, starts[thing], 1)])

    def listed(**kwargs: bool) -> list[str]:
        names, token = [], None
        while True:
            page = api.invoke("ListActiveViolations", {"maxResults": 5, **({"nextToken": token} if token else {})},
                              **kwargs)
            names += [v["thingName"] for v in page["activeViolations"]]
            token = page.get("nextToken")
            if not token:
                return names

    oldest_first = sorted(starts, key=starts.get)
    assert listed() == oldest_first
    assert listed(newest_first=True) == oldest_first[::-1]
