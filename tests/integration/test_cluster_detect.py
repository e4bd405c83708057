"""Two detect nodes end to end: real nats-server (JetStream) and real PostgreSQL, each node a
``DetectConsumer`` driving its own ``PartitionBatchStore``. One node loses its NATS connection in
the middle of the stream; the other takes its partitions over. Every report must be stored once
and the violation events must be exactly each thing's transitions, in order."""

from __future__ import annotations

import asyncio
from functools import partial
import itertools
import time
from pathlib import Path

import nats
import pytest
import sqlalchemy as sa

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.cluster.node import DetectConsumer
from iotdefender.cluster.partitions import assignment, partition_of
from iotdefender.cluster.report_stream import ReportPublisher, report_message_id
from iotdefender.cluster.topology import Topology, ensure
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.pipeline.partition_store import PartitionBatchStore
from iotdefender.pipeline.report_message import ReportMessage, ReportOutcome, Status, encode
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store.database import create_engine
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres

ACCOUNT = "123456789012"
PORTS = "aws:num-listening-tcp-ports"
PARTITIONS = 4
THINGS = [f"dev-{i}" for i in range(12)]
REPORTS = 10
# Ports per report: violating 1-3, compliant 4-6, violating 7-10 -> in-alarm, alarm-cleared, in-alarm.
PATTERN = [5, 5, 5, 1, 1, 1, 5, 5, 5, 5]
EXPECTED = [("in-alarm", 1), ("alarm-cleared", 4), ("in-alarm", 7)]
POISONED = THINGS[0]  # a message in its partition that is not a report
A, B = "detect-1", "detect-2"  # with 4 partitions, A's share is 1 and 2 (7 of the things), B's 0 and 3


def _stored(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM metric_values")).scalar_one()


def test_a_node_cut_off_mid_stream_is_taken_over_and_every_report_is_stored_once(jetstream, postgres, tmp_path: Path):
    url = postgres.create_database(f"detect{time.monotonic_ns()}")
    api = build_api(Settings(data_dir=tmp_path, database_url=url))
    api.invoke("CreateSecurityProfile", {"securityProfileName": "p", "behaviors": [
        {"name": "few-ports", "metric": PORTS, "criteria": {"comparisonOperator": "less-than", "value": {"count": 3}}}]})
    api.invoke("AttachSecurityProfile", {"securityProfileName": "p",
                                         "securityProfileTargetArn": api.context.arn("all/things")})
    engine = api.context.engine
    outcomes: list[ReportOutcome] = []
    detections: list[DetectionService] = []

    def detect_node() -> PartitionBatchStore:  # what one detect process holds: its own engine and state
        node_engine = create_engine(url)
        monitoring = MonitoringIndex(node_engine, api.context.arn(""))
        detection = DetectionService(node_engine, monitoring, AlertRoutes(), 172800.0,
                                     partition_of=partial(partition_of, partitions=PARTITIONS))
        detections.append(detection)

        async def told(batch: list[ReportOutcome]) -> None:
            outcomes.extend(batch)

        return PartitionBatchStore(monitoring, detection, lambda events: None, told)

    async def go() -> None:
        nc_a = await nats.connect(servers=jetstream.urls, allow_reconnect=False)
        nc_b = await nats.connect(servers=jetstream.urls)
        topology = Topology(replicas=1, partitions=PARTITIONS, lease_ttl_s=2.0)
        await ensure(nc_b.jetstream(), topology)
        stores = {A: detect_node(), B: detect_node()}
        nodes = {name: DetectConsumer(nc.jetstream(), topology, name, stores[name].handle,
                                      on_acquired=stores[name].on_acquired, on_released=stores[name].on_released,
                                      batch=8)
                 for name, nc in ((A, nc_a), (B, nc_b))}
        for node in nodes.values():
            await node.start()
        share = assignment(list(nodes), PARTITIONS)
        assert share[A] and share[B]
        await eventually(lambda: all(set(n.ownership.owned()) == share[name] for name, n in nodes.items()), 15, "split")
        publisher = ReportPublisher(nc_b.jetstream(), topology)

        async def publish(report: int) -> None:
            for thing in THINGS:
                message = ReportMessage(thing, {PORTS: {"count": PATTERN[report - 1]}}, 1000.0 + report, report,
                                        "json", "iotdefender.replies.test")
                await publisher.publish(thing, encode(message), report_message_id(thing, report))

        for report in (1, 2):
            await publish(report)
        await eventually(lambda: _stored(engine) == 2 * len(THINGS), 15, "the first reports stored")
        assert detections[0].evaluator.alarms(), "node a holds alarms of its partitions"
        await publisher.publish(POISONED, b"\xc1garbage", "poison", "iotdefender.replies.test", 99)
        for report in (3, 4):
            await publish(report)
        await nc_a.close()  # node a is cut off mid-stream: its leases run out, b takes its partitions
        cut = time.monotonic()
        for report in range(5, REPORTS + 1):
            await publish(report)
        await eventually(lambda: len(nodes[B].ownership.owned()) == PARTITIONS, 15, "b owns every partition")
        takeover = time.monotonic() - cut
        # a counted its leases lost and gave its partitions up: it forgot their things' alarms
        await eventually(lambda: not detections[0].evaluator.alarms(), 5, "a forgot its partitions' states")
        await eventually(lambda: _stored(engine) == REPORTS * len(THINGS), 20, "every report stored")
        js = nc_b.jetstream()

        async def left_in_stream() -> int:
            return (await js.stream_info(topology.stream)).state.messages

        deadline = time.monotonic() + 10
        while await left_in_stream():  # everything acked, the poison message included
            assert time.monotonic() < deadline, "reports left unacked"
            await asyncio.sleep(0.1)
        redelivered = sum(1 for o in outcomes if o.status is Status.DUPLICATE)
        print(f"b owned every partition {takeover:.2f}s after a was cut off; "
              f"{redelivered} reports a had committed came back to b and were not stored again")
        await nodes[B].stop()
        await nc_b.close()

    asyncio.run(asyncio.wait_for(go(), 60))

    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT thing_name, ts FROM metric_values")).all()
        events = conn.execute(sa.text("SELECT thing_name, event_type, event_time FROM violation_events ORDER BY id"))
        by_thing = {thing: [(e.event_type, int(e.event_time) - 1000) for e in group]
                    for thing, group in itertools.groupby(sorted(events, key=lambda e: e.thing_name),
                                                          key=lambda e: e.thing_name)}
    assert len(rows) == len(set(rows)) == REPORTS * len(THINGS)  # each report stored once
    assert by_thing == {thing: EXPECTED for thing in THINGS}
    # the poison message is answered to the broker node that published it, with its report id
    # (once, or again by b if a's ack was lost when it was cut off)
    poisoned = {(o.status, o.error_code, o.reply_to) for o in outcomes if o.thing == POISONED and o.report_id == 99}
    assert poisoned == {(Status.REJECTED, "InternalError", "iotdefender.replies.test")}
    accepted = {(o.thing, o.report_id) for o in outcomes if o.accepted}
    assert accepted == {(thing, report) for thing in THINGS for report in range(1, REPORTS + 1)}
    engine.dispose()
