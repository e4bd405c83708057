"""Cloud-side metrics in cluster mode against real PostgreSQL: two broker nodes' parts of one
device's window merged by the partition's detect node into one datapoint, stored and evaluated
once, redelivery and late parts harmless, a superseded owner storing nothing; the parts kept in
PostgreSQL until their window is closed, so the next owner after a crash (or a clean hand-over)
closes the window open at the crash from every part, and a window (or a thing's share of one)
closed before the crash is not closed again.

The broker nodes are ``WindowPublisher``s over their own event intake (as ``serve`` builds them)
whose publish puts each message in a list, read back as the partition's deliveries.
"""

from __future__ import annotations

import asyncio
import json
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import sqlalchemy as sa

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.cloud.service import CloudEventIntake
from iotdefender.cloud import cluster_parts
from iotdefender.cloud import service as cloud_service
from iotdefender.cloud.aggregator import ClientWindow
from iotdefender.cloud.cluster_windows import (PARTS_LATE, WINDOWS_INCOMPLETE, CloudWindowEnd, CloudWindowMessage,
                                               WindowCollector, WindowPublisher, encode)
from iotdefender.cluster import fencing
from iotdefender.cluster.fencing import Fenced
from iotdefender.cluster.partitions import partition_of
from iotdefender.cluster.report_stream import Delivery, PartitionReader, ReportPublisher, report_message_id
from iotdefender.cluster.topology import Topology, ensure
from iotdefender.pipeline.batch_store import EventSummary
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.pipeline.partition_store import PartitionBatchStore
from iotdefender.pipeline.report_message import ReportMessage
from iotdefender.pipeline.report_message import encode as encode_report
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store.availability import StoreUnavailable
from iotdefender.metrics_catalog import AWAY_SERIES
from iotdefender.store import disconnections, metric_values
from iotdefender.store.database import create_engine
from tests.support import connection_attempts
from tests.support.processes import PostgresCluster

pytestmark = pytest.mark.postgres

ACCOUNT = "123456789012"
WINDOW_S = 300.0
W = 10  # the window [3000, 3300)
P = 3


def things_in(partition: int, count: int, prefix: str) -> list[str]:
    names = (f"{prefix}-{i}" for i in itertools.count())
    return list(itertools.islice((name for name in names if partition_of(name) == partition), count))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(postgres, tmp_path: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    yield prepared(postgres, tmp_path)


def prepared(postgres: PostgresCluster, tmp_path: Path) -> str:
    """A new database of ``postgres`` with the schema and a profile of two cloud-side behaviors."""
    url = postgres.create_database(f"cloudw{time.monotonic_ns()}")
    api = build_api(Settings(data_dir=tmp_path, database_url=url))
    api.invoke("CreateSecurityProfile", {
        "securityProfileName": "chatty",
        "behaviors": [{"name": "sent", "metric": "aws:num-messages-sent",
                       "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 5}}},
                      {"name": "away", "metric": "aws:disconnect-duration",
                       "criteria": {"comparisonOperator": "less-than", "value": {"count": 60}}}],
        "additionalMetricsToRetainV2": [{"metric": "aws:message-byte-size"}, {"metric": "aws:source-ip-address"}]})
    api.invoke("AttachSecurityProfile", {"securityProfileName": "chatty",
                                         "securityProfileTargetArn": api.context.arn("all/things")})
    api.context.engine.dispose()
    return url


class Detect:
    """One detect node: its detection, partition store and cloud window collector."""

    def __init__(self, url: str, clock: Clock, sets_readable: Callable[[], bool] = lambda: True) -> None:
        self.engine = create_engine(url)
        self.members: set[str] = set()  # the other nodes still members of the cluster (none: all killed)
        monitoring = MonitoringIndex(self.engine, f"arn:aws:iot:us-east-1:{ACCOUNT}:")
        self.detection = DetectionService(self.engine, monitoring, AlertRoutes({}), 172800.0)
        self.events: list[EventSummary] = []
        self.store = PartitionBatchStore(monitoring, self.detection, self.events.extend)
        self.owned: dict[int, int] = {}
        self.collector = WindowCollector(self.detection, monitoring, self.events.extend, lambda: self.owned,
                                         WINDOW_S, self.engine, clock=clock, sets_readable=sets_readable,
                                         is_live=lambda node: node in self.members)
        self.handle = self.collector.handler(self.store.handle)

    def acquire(self, partition: int, token: int) -> None:
        self.store.acquire(partition, token)
        self.owned[partition] = token
        self.collector.acquire(partition)


def datapoints(url: str, thing: str) -> list[tuple[float, dict[str, Any]]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT ts, datapoints FROM metric_values WHERE thing_name = :t ORDER BY ts"),
                            {"t": thing}).all()
    engine.dispose()
    return [(float(ts), points if isinstance(points, dict) else json.loads(points)) for ts, points in rows]


def event_types(url: str, thing: str) -> list[str]:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = [f"{row[0]}:{row[1]}" for row in conn.execute(sa.text(
            "SELECT event_type, behavior_name FROM violation_events WHERE thing_name = :t ORDER BY id"), {"t": thing})]
    engine.dispose()
    return found


def broker(node: str, clock: Clock, sent: list[Delivery], batched: bool = False) -> WindowPublisher:
    """A broker node's publisher, its messages appended to ``sent``: a part per device, or batches
    of a partition's parts (``batched``: every live node reads them)."""
    async def publish(thing: str, payload: bytes, message_id: str) -> None:
        sent.append(Delivery(partition_of(thing), thing, payload, len(sent) + 1, 1))

    async def publish_parts(partition: int, payload: bytes, message_id: str) -> None:
        sent.append(Delivery(partition, "", payload, len(sent) + 1, 1))
    return WindowPublisher(CloudEventIntake(WINDOW_S, clock), publish, node, clock=clock,
                           publish_parts=publish_parts if batched else None)


@pytest.mark.parametrize("batched", [(False, False), (True, True), (True, False)],
                         ids=["a-part-per-message", "batches", "batches-and-a-node-of-the-release-before"])
def test_a_device_that_moves_between_broker_nodes_keeps_one_series(database, batched):
    clock = Clock(W * WINDOW_S + 10)
    detect = Detect(database, clock)
    detect.acquire(P, 7)
    mover, leaver = things_in(P, 2, "cw")
    sent: list[Delivery] = []
    a, b = broker("node-a", clock, sent, batched[0]), broker("node-b", clock, sent, batched[1])
    # The mover: 4 messages on A, reconnects to B, 3 more (7 > 5 in all; neither node saw more than 5).
    a.intake.connect_attempt(mover, "10.0.0.1", True)
    for _ in range(4):
        a.intake.message_sent(mover, "t/x", 10)
    a.intake.disconnect(mover)
    clock.now += 30
    b.intake.connect_attempt(mover, "10.0.0.2", True)
    for _ in range(3):
        b.intake.message_sent(mover, "t/x", 20)
    # The leaver: connects to B and leaves, 4 minutes before the window's end.
    b.intake.connect_attempt(leaver, "10.0.0.3", True)
    b.intake.message_sent(leaver, "t/y", 5)
    clock.now = W * WINDOW_S + 60
    b.intake.disconnect(leaver)

    clock.now = (W + 1) * WINDOW_S + 0.2  # the window ended; each broker node publishes its parts
    assert asyncio.run(a.publish_due()) == 1 and asyncio.run(b.publish_due()) == 2
    assert len(sent) == 1 + (1 if batched[1] else 2)  # B's two devices of P: one batch, or one message each
    asyncio.run(detect.handle(P, 7, sent))
    asyncio.run(detect.handle(P, 7, sent))  # redelivered (a lost ack): each part replaces itself
    assert detect.collector.close_due() == 0  # within the grace: not closed yet
    clock.now = (W + 1) * WINDOW_S + detect.collector.grace_s + 0.1
    assert detect.collector.close_due() == 2

    end = (W + 1) * WINDOW_S
    [(ts, points)] = datapoints(database, mover)
    assert ts == end
    assert points["aws:num-messages-sent"] == {"count": 7}
    assert points["aws:disconnect-duration"] == {"count": 0}  # it ended the window connected, on B
    # Its messages: 10 bytes on A, 20 on B; the parts merge the largest and the smallest of both.
    assert (points["aws:message-byte-size"], points["aws:message-byte-size|smallest"]) == ({"count": 20},
                                                                                           {"count": 10})
    assert event_types(database, mover) == ["in-alarm:sent"]
    [(_, left)] = datapoints(database, leaver)
    assert left["aws:num-messages-sent"] == {"count": 1}
    assert left["aws:disconnect-duration"] == {"count": 4}  # minutes since it left B
    assert event_types(database, leaver) == []

    # A part of the closed window arriving again (JetStream redelivery after the close) counts nothing.
    asyncio.run(detect.handle(P, 7, sent))
    clock.now += WINDOW_S
    detect.collector.close_due()  # the next window: idle for both, 0 messages; the mover's alarm clears
    assert [p["aws:num-messages-sent"]["count"] for _, p in datapoints(database, mover)] == [7, 0]
    assert [sorted(k for k in p if k.startswith("aws:message-byte-size")) for _, p in datapoints(database, mover)] \
        == [["aws:message-byte-size", "aws:message-byte-size|smallest"], []]  # no message, no message size
    assert event_types(database, mover) == ["in-alarm:sent", "alarm-cleared:sent"]
    assert [p["aws:disconnect-duration"]["count"] for _, p in datapoints(database, leaver)] == [4, 9]
    detect.engine.dispose()


def stored_report_id(detect: Detect, thing: str) -> int | None:
    with detect.engine.connect() as conn:
        state = metric_values.load_report_states(conn, {thing}).get(thing)
    return state[0] if state is not None else None


def a_part_published(database: str, prefix: str) -> tuple[Clock, Detect, str, bytes]:
    """A detect node owning P (token 7) and one device of P's window part, published by a broker
    node as the window ended: the clock, the node, the device and the part's payload."""
    clock = Clock(W * WINDOW_S + 10)
    detect = Detect(database, clock)
    detect.acquire(P, 7)
    thing = things_in(P, 1, prefix)[0]
    parts: list[Delivery] = []
    a = broker("node-a", clock, parts)
    a.intake.connect_attempt(thing, "10.0.0.1", True)
    clock.now = (W + 1) * WINDOW_S + 0.2
    assert asyncio.run(a.publish_due()) == 1
    return clock, detect, thing, parts[0].payload


def test_reports_that_join_a_waiting_batch_stop_at_a_window_part(database):
    """What a reader received after handing its batch over joins the reports (``More``) only up
    to the first cloud window part: a part among them would be read as a report (poison:
    answered and acked, the part lost); it and what follows come in the reader's next batch,
    whose handler stores the part first."""
    clock, detect, thing, part = a_part_published(database, "join")

    def report(report_id: int) -> Delivery:
        message = ReportMessage(thing, {"aws:num-listening-tcp-ports": {"count": 1}}, clock.now, report_id,
                                "json", "iotdefender.replies.b1")
        return Delivery(P, thing, encode_report(message), 10 + report_id, 1)

    received = [report(2), Delivery(P, thing, part, 20, 1), report(3)]

    def more(accept: Callable[[Delivery], bool]) -> list[Delivery]:  # as PartitionReader's: in order
        taken = list(itertools.takewhile(accept, received))
        del received[:len(taken)]
        return taken

    async def reader() -> None:  # one event loop, as a node's
        await detect.handle(P, 7, [report(1)], more)
        assert [d.stream_sequence for d in received] == [20, 13]  # the part and what follows it: left
        assert stored_report_id(detect, thing) == 2  # reports 1 and 2, in one batch
        await detect.handle(P, 7, received)  # the reader's next batch
        assert stored_report_id(detect, thing) == 3

    asyncio.run(reader())
    with detect.engine.connect() as conn:
        assert [part.thing for part in cluster_parts.load(conn, P)[1]] == [thing]  # the part: stored as one


def test_a_superseded_owner_stores_nothing_and_the_next_owner_closes_the_window_from_every_part_kept(database):
    clock = Clock(W * WINDOW_S + 10)
    old, new, third = Detect(database, clock), Detect(database, clock), Detect(database, clock)
    old.acquire(P, 7)
    [thing] = things_in(P, 1, "cx")
    sent: list[Delivery] = []
    a, b = broker("node-a", clock, sent), broker("node-b", clock, sent)
    for _ in range(4):
        a.intake.message_sent(thing, "t/x", 10)
    for _ in range(3):
        b.intake.message_sent(thing, "t/x", 10)
    clock.now = (W + 1) * WINDOW_S + 0.2
    asyncio.run(a.publish_due())
    asyncio.run(b.publish_due())
    asyncio.run(old.handle(P, 7, sent))  # acked: kept in PostgreSQL, not only in the old owner's memory

    new.acquire(P, 8)  # the old owner died (kill -9) within the window's grace: its memory is gone
    with pytest.raises(Fenced):  # a superseded owner cannot keep parts any more: not acked, read again
        asyncio.run(old.handle(P, 7, sent))
    clock.now += new.collector.grace_s + 0.1
    old.collector.close_due()  # fenced: nothing stored
    assert datapoints(database, thing) == []
    assert new.collector.close_due() == 1  # from the parts the old owner kept: 4 + 3, once
    assert [(ts, p["aws:num-messages-sent"]) for ts, p in datapoints(database, thing)] == [
        ((W + 1) * WINDOW_S, {"count": 7})]
    asyncio.run(new.handle(P, 8, sent))  # redelivered after the close: late, counts nothing

    a.intake.message_sent(thing, "t/x", 10)  # window W+1; its owner dies before closing it
    clock.now = (W + 2) * WINDOW_S + 0.2
    del sent[:]
    asyncio.run(a.publish_due())
    asyncio.run(new.handle(P, 8, sent))
    clock.now += new.collector.grace_s + 5  # the lease ran out after W+1 was due
    third.acquire(P, 9)
    assert third.collector.close_due() == 0  # not before the grace after its acquisition (redeliveries first)
    asyncio.run(third.handle(P, 9, sent))  # the dead owner's unacked copy: replaces, adds nothing
    clock.now += third.collector.grace_s
    third.collector.close_due()  # W was closed by `new` (its mark): only W+1, from the kept part
    assert [(ts, p["aws:num-messages-sent"]["count"]) for ts, p in datapoints(database, thing)] == [
        ((W + 1) * WINDOW_S, 7), ((W + 2) * WINDOW_S, 1)]
    with third.engine.connect() as conn:  # closed windows' parts are deleted, but the last's: who saw whom
        assert conn.execute(sa.text("SELECT window_index, node FROM cluster_cloud_part_sets")).all() == [
            (W + 1, "node-a")]
        assert conn.execute(sa.text("SELECT count(*) FROM cluster_cloud_parts")).scalar() == 0
    for node in (old, new, third):
        node.engine.dispose()


class Crash(BaseException):
    """The detect node's process ends here (kill -9): nothing after it runs."""


def dies_after_the_first_chunk(detect: Detect, monkeypatch: pytest.MonkeyPatch) -> None:
    """The detect node's process ends (``Crash``) as its cloud store is given a window's second chunk."""
    store = detect.collector.cloud._store
    chunks: list[Any] = []

    def store_batch(items):  # type: ignore[no-untyped-def]
        if chunks:
            raise Crash()
        chunks.append(items)
        return type(store).store_batch(store, items)
    monkeypatch.setattr(store, "store_batch", store_batch)


def test_a_window_closed_in_part_before_a_crash_is_closed_for_the_other_things_only(database, monkeypatch):
    monkeypatch.setattr(cloud_service, "BATCH_MAX", 2)  # a window closed in transactions of two things
    clock = Clock(W * WINDOW_S + 10)
    old, new = Detect(database, clock), Detect(database, clock)
    old.acquire(P, 7)
    things = sorted(things_in(P, 5, "cz"))
    sent: list[Delivery] = []
    a = broker("node-a", clock, sent)
    for count, thing in enumerate(things, start=1):
        for _ in range(count):
            a.intake.message_sent(thing, "t/x", 10)
    clock.now = (W + 1) * WINDOW_S + 0.2
    asyncio.run(a.publish_due())
    asyncio.run(old.handle(P, 7, sent))
    clock.now += old.collector.grace_s + 0.1
    dies_after_the_first_chunk(old, monkeypatch)
    with pytest.raises(Crash):
        old.collector.close_due()
    assert [len(datapoints(database, thing)) for thing in things] == [1, 1, 0, 0, 0]

    new.acquire(P, 8)
    late = PARTS_LATE._value.get()
    asyncio.run(new.handle(P, 8, sent))  # the window's parts again: late for the two things closed only
    assert PARTS_LATE._value.get() == late + 2
    clock.now += new.collector.grace_s
    new.collector.close_due()
    assert [[p["aws:num-messages-sent"]["count"] for _, p in datapoints(database, thing)] for thing in things] == [
        [1], [2], [3], [4], [5]]  # each thing's window once: the first two by the old owner, the rest by the new
    for node in (old, new):
        node.engine.dispose()


def test_a_clean_hand_over_gives_the_next_owner_the_parts_of_the_open_window(database):
    clock = Clock(W * WINDOW_S + 10)
    old, new = Detect(database, clock), Detect(database, clock)
    old.acquire(P, 7)
    [thing] = things_in(P, 1, "ch")
    sent: list[Delivery] = []
    a, b = broker("node-a", clock, sent), broker("node-b", clock, sent)
    for _ in range(4):
        a.intake.message_sent(thing, "t/x", 10)
    for _ in range(3):
        b.intake.message_sent(thing, "t/x", 10)
    clock.now = (W + 1) * WINDOW_S + 0.2
    asyncio.run(a.publish_due())
    asyncio.run(b.publish_due())
    asyncio.run(old.handle(P, 7, sent))  # acked and kept

    old.collector.released(P)  # a rebalance: the old owner gives P up before the window is due
    del old.owned[P]
    new.acquire(P, 8)
    clock.now += new.collector.grace_s + 0.1
    assert old.collector.close_due() == 0
    new.collector.close_due()
    assert [(ts, p["aws:num-messages-sent"]) for ts, p in datapoints(database, thing)] == [
        ((W + 1) * WINDOW_S, {"count": 7})]
    old.engine.dispose()
    new.engine.dispose()


def close_in_an_outage(detect: Detect, monkeypatch: pytest.MonkeyPatch) -> None:
    """The windows due now fail to close (the database down), as ``run`` handles it."""
    def down(items):  # type: ignore[no-untyped-def]
        raise StoreUnavailable("the database is down")
    monkeypatch.setattr(detect.collector.cloud._store, "store_batch", down)
    closings = detect.collector.merge_due()
    with pytest.raises(StoreUnavailable):
        detect.collector.close(closings)
    detect.collector.failed(closings)  # what run() does when a close raises
    monkeypatch.undo()


def test_a_window_whose_close_failed_in_an_outage_is_closed_once_the_database_is_back(database, monkeypatch):
    clock = Clock(W * WINDOW_S + 10)
    detect = Detect(database, clock)
    detect.acquire(P, 7)
    [thing] = things_in(P, 1, "co")
    sent: list[Delivery] = []
    a = broker("node-a", clock, sent)
    for _ in range(6):
        a.intake.message_sent(thing, "t/x", 10)
    clock.now = (W + 1) * WINDOW_S + 0.2
    asyncio.run(a.publish_due())
    asyncio.run(detect.handle(P, 7, sent))
    clock.now += detect.collector.grace_s + 0.1
    close_in_an_outage(detect, monkeypatch)

    a.intake.message_sent(thing, "t/x", 10)  # window W+1
    clock.now = (W + 2) * WINDOW_S + 0.2
    del sent[:]
    asyncio.run(a.publish_due())
    asyncio.run(detect.handle(P, 7, sent))
    clock.now += detect.collector.grace_s + 0.1
    assert detect.collector.close_due() == 0  # W must come first: W+1 waits for the partition's recovery
    asyncio.run(detect.collector.recover())  # the database is back: resumed from its mark and kept parts
    clock.now += detect.collector.grace_s
    detect.collector.close_due()
    assert [(ts, p["aws:num-messages-sent"]["count"]) for ts, p in datapoints(database, thing)] == [
        ((W + 1) * WINDOW_S, 6), ((W + 2) * WINDOW_S, 1)]
    detect.engine.dispose()


def test_a_part_redelivered_after_a_close_failed_in_an_outage_is_not_late(database, monkeypatch):
    """The database went down as a window ended: its parts could not be kept (nakked, redelivered
    later) and its close failed. A part redelivered once the database is back, before the partition
    is resumed from its mark, belongs to a window that is not closed: it used to be dropped as late
    (most of such a window's counts were lost in an operator's trial), and is now kept and counted."""
    clock = Clock(W * WINDOW_S + 10)
    detect = Detect(database, clock)
    detect.acquire(P, 7)
    thing, other = things_in(P, 2, "rd")
    sent: list[Delivery] = []
    a = broker("node-a", clock, sent)
    for _ in range(6):
        a.intake.message_sent(thing, "t/x", 10)
    a.intake.message_sent(other, "t/x", 10)
    clock.now = (W + 1) * WINDOW_S + 0.2
    asyncio.run(a.publish_due())
    kept_in_time = [d for d in sent if d.thing_name == other]
    sent[:] = [d for d in sent if d.thing_name == thing]  # not kept yet: the database went down
    asyncio.run(detect.handle(P, 7, kept_in_time))
    clock.now += detect.collector.grace_s + 0.1
    close_in_an_outage(detect, monkeypatch)
    late = PARTS_LATE._value.get()
    asyncio.run(detect.handle(P, 7, sent))  # redelivered: the database answers again
    assert PARTS_LATE._value.get() == late
    asyncio.run(detect.collector.recover())
    clock.now += detect.collector.grace_s
    detect.collector.close_due()
    assert [(ts, p["aws:num-messages-sent"]["count"]) for ts, p in datapoints(database, thing)] == [
        ((W + 1) * WINDOW_S, 6)]
    detect.engine.dispose()


def test_a_part_of_a_closed_window_kept_while_a_partition_was_stale_is_not_counted_again(database, monkeypatch):
    """While a partition's closing is unknown (stale) its parts are kept; one of a window its mark
    shows closed (a redelivered copy) is dropped when the partition is resumed, not counted twice."""
    clock = Clock(W * WINDOW_S + 10)
    detect = Detect(database, clock)
    detect.acquire(P, 7)
    [thing] = things_in(P, 1, "st")
    sent: list[Delivery] = []
    a = broker("node-a", clock, sent)
    for _ in range(3):
        a.intake.message_sent(thing, "t/x", 10)
    clock.now = (W + 1) * WINDOW_S + 0.2
    asyncio.run(a.publish_due())
    part_of_w = list(sent)
    asyncio.run(detect.handle(P, 7, part_of_w))
    clock.now += detect.collector.grace_s + 0.1
    detect.collector.close_due()  # W closed: 3
    a.intake.message_sent(thing, "t/x", 10)
    clock.now = (W + 2) * WINDOW_S + 0.2
    del sent[:]
    asyncio.run(a.publish_due())
    asyncio.run(detect.handle(P, 7, sent))
    clock.now += detect.collector.grace_s + 0.1
    close_in_an_outage(detect, monkeypatch)
    asyncio.run(detect.handle(P, 7, part_of_w))  # W's part again, while the partition is stale
    asyncio.run(detect.collector.recover())
    clock.now += detect.collector.grace_s
    detect.collector.close_due()
    clock.now += WINDOW_S
    detect.collector.close_due()
    counts = [(ts, p["aws:num-messages-sent"]["count"]) for ts, p in datapoints(database, thing)]
    assert counts[:2] == [((W + 1) * WINDOW_S, 3), ((W + 2) * WINDOW_S, 1)], counts
    assert [ts for ts, _ in counts].count((W + 1) * WINDOW_S) == 1
    detect.engine.dispose()


def test_a_closing_mark_never_goes_back_to_an_earlier_window(database):
    """A close that failed inside window 5 (its first things stored and marked) still marks the
    windows before it closed: that mark must not take the partition back before window 5's things."""
    engine = create_engine(database)
    with engine.begin() as conn:
        cluster_parts.advance(conn, {P: cluster_parts.Mark(5, "m")})
        cluster_parts.advance(conn, {P: cluster_parts.Mark(4, None)})
        assert cluster_parts.load(conn, P)[0] == cluster_parts.Mark(5, "m")
        cluster_parts.advance(conn, {P: cluster_parts.Mark(5, None)})
        assert cluster_parts.load(conn, P)[0] == cluster_parts.Mark(5, None)
    engine.dispose()


KEEPERS = pytest.mark.parametrize("keeper", [cluster_parts.keep, cluster_parts.keep_sets],
                                  ids=["a-row-per-part", "a-set-per-row"])


def sent(count: int) -> ClientWindow:
    return ClientWindow(sent={"t": count}, sent_max_bytes={"t": 10}, sent_min_bytes={"t": 10})


@KEEPERS
def test_parts_kept_replace_their_copies_even_twice_in_one_batch(database, keeper):
    """A part redelivered replaces its copy (same window, thing and broker node), in a later batch
    or in the same one: the parts are kept in one statement, which may not touch a row twice."""
    engine = create_engine(database)
    with engine.begin() as conn:
        keeper(conn, P, [cluster_parts.StoredPart(5, "t1", "node-a", sent(1)),
                         cluster_parts.StoredPart(5, "t2", "node-a", sent(2))])
        keeper(conn, P, [cluster_parts.StoredPart(5, "t1", "node-a", sent(3)),
                         cluster_parts.StoredPart(5, "t3", "node-b", sent(4)),
                         cluster_parts.StoredPart(5, "t3", "node-b", sent(5))])
        _, parts, _, _ = cluster_parts.load(conn, P)
    assert sorted((p.thing, p.node, p.part.sent["t"]) for p in parts) == [
        ("t1", "node-a", 3), ("t2", "node-a", 2), ("t3", "node-b", 5)]
    engine.dispose()


def test_a_set_received_again_replaces_its_row_and_overlapping_sets_agree_the_later_wins(database):
    """Parts kept a set per row: the same set received again (a redelivery) replaces its row; a
    set cut differently (a batch redelivered with other boundaries) is another row holding the
    same parts, and the row written later wins when they are read back. Parts kept a row each by
    the release before are read too, and a set written after them wins. Closing the window
    deletes from both tables."""
    engine = create_engine(database)
    with engine.begin() as conn:
        cluster_parts.keep(conn, P, [cluster_parts.StoredPart(5, "t0", "node-a", sent(1)),
                                     cluster_parts.StoredPart(5, "t1", "node-a", sent(1))])  # the release before
        first = [cluster_parts.StoredPart(5, "t1", "node-a", sent(2)), cluster_parts.StoredPart(5, "t2", "node-a", sent(2))]
        cluster_parts.keep_sets(conn, P, first)
        cluster_parts.keep_sets(conn, P, first)  # received again
        assert conn.execute(sa.text("SELECT count(*) FROM cluster_cloud_part_sets")).scalar() == 1
        cluster_parts.keep_sets(conn, P, [cluster_parts.StoredPart(5, "t2", "node-a", sent(3)),
                                          cluster_parts.StoredPart(5, "t3", "node-a", sent(3))])
        _, parts, _, _ = cluster_parts.load(conn, P)
        assert [(p.thing, p.part.sent["t"]) for p in parts] == [("t0", 1), ("t1", 2), ("t2", 3), ("t3", 3)]
        cluster_parts.advance(conn, {P: cluster_parts.Mark(6, None)})
        assert cluster_parts.load(conn, P)[1] == []
        assert conn.execute(sa.text("SELECT (SELECT count(*) FROM cluster_cloud_parts) + "
                                    "(SELECT count(*) FROM cluster_cloud_part_sets)")).scalar() == 0
    engine.dispose()


def test_a_node_keeps_sets_only_once_every_live_node_reads_them(database):
    """Rolling upgrades: while a node of the release before lives (it reads only a row per part),
    a detect node keeps a row per part; once they all read sets, a set per row."""
    clock = Clock(W * WINDOW_S + 10)
    readable = [False]
    detect = Detect(database, clock, sets_readable=lambda: readable[0])
    detect.acquire(P, 7)
    thing, other = things_in(P, 2, "upg")

    def part_of(name: str) -> CloudWindowMessage:
        return CloudWindowMessage(name, W, WINDOW_S, "node-a", sent(1))

    detect.collector.keep(P, 7, [part_of(thing)])
    readable[0] = True
    detect.collector.keep(P, 7, [part_of(other)])
    with detect.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT thing FROM cluster_cloud_parts")).scalars().all() == [thing]
        assert conn.execute(sa.text("SELECT count(*) FROM cluster_cloud_part_sets")).scalar() == 1
        assert sorted(p.thing for p in cluster_parts.load(conn, P)[1]) == sorted([thing, other])
    detect.engine.dispose()


@KEEPERS
def test_who_saw_whom_is_known_only_for_the_window_before_the_next_to_close(database, keeper):
    """The parts of the last window closed whole are kept as who saw whom in it, also while the
    next window is closed in part; a window closed by a release before them (which deletes them and
    names no seen window) leaves none assumed, not an empty one (every device whole)."""
    engine = create_engine(database)
    part = ClientWindow()
    with engine.begin() as conn:
        keeper(conn, P, [cluster_parts.StoredPart(5, "t1", "node-a", part),
                         cluster_parts.StoredPart(5, "t1", "node-b", part),
                         cluster_parts.StoredPart(5, "t2", "node-b", part),
                         cluster_parts.StoredPart(6, "t1", "node-a", part)])
        cluster_parts.advance(conn, {P: cluster_parts.Mark(5, None)})
        mark, parts, seen, closed_in_part = cluster_parts.load(conn, P)
        assert closed_in_part == []
        assert [(p.window, p.thing, p.node) for p in parts] == [(6, "t1", "node-a")]
        assert seen == cluster_parts.Seen(5, {"t1": frozenset({"node-a", "node-b"}), "t2": frozenset({"node-b"})})
        cluster_parts.advance(conn, {P: cluster_parts.Mark(6, "t1")})
        assert cluster_parts.load(conn, P)[2] == seen  # W 6 closed in part: W 5 still the one before
        # A release before 0015 closes window 6: it deletes through 6 and sets no seen window.
        conn.execute(sa.text("UPDATE cluster_cloud_progress SET window_index = 6, through_thing = NULL"))
        conn.execute(sa.text("DELETE FROM cluster_cloud_parts WHERE window_index <= 6"))
        assert cluster_parts.load(conn, P)[2] is None
        cluster_parts.advance(conn, {P: cluster_parts.Mark(7, None)})  # this release again: 7 kept, none of it
        assert cluster_parts.load(conn, P)[2] == cluster_parts.Seen(7, {})
    engine.dispose()


# -- ends of window: a window a publisher did not hand over whole gives no 0 (cloud/window_ends.py) --

class Unreachable(Exception):
    """NATS did not store a message (its server killed, an election)."""


class EndingBroker:
    """A broker node that ends its windows, whose publishing of parts or ends can fail (``down``)."""

    def __init__(self, node: str, clock: Clock, sent: list[Delivery], hosts: bool = False) -> None:
        self.down: set[str] = set()
        self.sent = sent

        async def publish(thing: str, payload: bytes, message_id: str) -> None:
            self._store("part", partition_of(thing), thing, payload)

        async def publish_end(partition: int, payload: bytes, message_id: str) -> None:
            self._store("end", partition, "", payload)
        self.publisher = WindowPublisher(CloudEventIntake(WINDOW_S, clock), publish, node, clock=clock,
                                         retry_s=0.3, publish_end=publish_end, end_interval_s=0.0, hosts=hosts)
        self.intake = self.publisher.intake

    def _store(self, kind: str, partition: int, thing: str, payload: bytes) -> None:
        if kind in self.down:
            raise Unreachable("nats: timeout")
        if partition == P:  # the detect node of these tests reads partition P
            self.sent.append(Delivery(partition, thing, payload, len(self.sent) + 1, 1))

    def publish_due(self) -> int:
        return asyncio.run(self.publisher.publish_due())


def sent_counts(url: str, thing: str) -> list[tuple[int, int]]:
    """(window, messages sent) of each datapoint of the thing."""
    return [(round(ts / WINDOW_S) - 1, p["aws:num-messages-sent"]["count"]) for ts, p in datapoints(url, thing)]


def deliver(detect: Detect, sent: list[Delivery], token: int = 7) -> None:
    asyncio.run(detect.handle(P, token, sent))
    del sent[:]


def two_ending_brokers(url: str, prefix: str, count: int, hosts: bool = False
                       ) -> tuple[Clock, Detect, list[str], EndingBroker, EndingBroker]:
    """A detect node owning P in window W, ``count`` of P's things, broker nodes A and B (``hosts``:
    their devices are connected to them, as on broker nodes running Mosquitto)."""
    clock = Clock(W * WINDOW_S + 10)
    detect = Detect(url, clock)
    detect.acquire(P, 7)
    sent: list[Delivery] = []
    return clock, detect, things_in(P, count, prefix), EndingBroker("node-a", clock, sent, hosts), \
        EndingBroker("node-b", clock, sent, hosts)


def one_message_each_in_w(clock: Clock, *sending: tuple[EndingBroker, str]) -> None:
    """Each thing sends one message through its broker node in W; W ends and they publish."""
    for broker_node, thing in sending:
        broker_node.intake.message_sent(thing, "t/x", 10)
    clock.now = (W + 1) * WINDOW_S + 0.2
    for broker_node, _ in sending:
        broker_node.publish_due()


def window_ended(window: int, clock: Clock, detect: Detect, brokers: list[EndingBroker], token: int = 7) -> int:
    """``window`` ends: the brokers publish (0.2 s after), the detect node reads it all and, its
    grace later, closes what is due; returns the devices stored."""
    clock.now = (window + 1) * WINDOW_S + 0.2
    for broker_node in brokers:
        broker_node.publish_due()
    deliver(detect, brokers[0].sent, token)
    clock.now += detect.collector.grace_s
    return detect.collector.close_due()


def test_a_window_whose_parts_a_broker_node_could_not_publish_gives_its_devices_no_datapoint_not_0(database):
    clock, detect, (on_a, on_b, idle, mover, newcomer), a, b = two_ending_brokers(database, "lost", 5)
    a.intake.connect_attempt(idle, "10.0.0.1", True)
    for _ in range(2):
        a.intake.message_sent(on_a, "t/x", 10)
    for _ in range(3):
        b.intake.message_sent(on_b, "t/x", 10)
    b.intake.message_sent(mover, "t/x", 10)
    assert window_ended(W, clock, detect, [a, b]) == 4  # every publisher's end came: complete

    # Window W+1: B cannot publish its part (NATS away longer than its retries); its end, published
    # once NATS is back, says so.
    a.intake.message_sent(on_a, "t/x", 10)
    for _ in range(3):
        b.intake.message_sent(on_b, "t/x", 10)
    a.intake.connect_attempt(mover, "10.0.0.4", True)  # from B: its count on A is the rest of its window
    a.intake.message_sent(mover, "t/x", 10)
    a.intake.connect_attempt(newcomer, "10.0.0.5", True)  # on no other node before: its part is whole
    a.intake.message_sent(newcomer, "t/x", 10)
    clock.now = (W + 2) * WINDOW_S + 0.2
    assert a.publish_due() == 3
    b.down = {"part"}
    assert b.publish_due() == 0
    b.down = set()
    deliver(detect, a.sent)
    clock.now += detect.collector.grace_s
    assert detect.collector.close_due() == 2  # incomplete: the devices with whole parts only

    # Window W+2: B publishes again; its end vouches for W+2 (not W+1): complete again.
    b.intake.message_sent(on_b, "t/x", 10)
    assert window_ended(W + 2, clock, detect, [a, b]) == 5

    assert sent_counts(database, on_a) == [(W, 2), (W + 1, 1), (W + 2, 0)]
    assert sent_counts(database, on_b) == [(W, 3), (W + 2, 1)]  # no 0 for W+1, when it sent 3 through B
    assert sent_counts(database, idle) == [(W, 0), (W + 2, 0)]  # it may have been on B: no datapoint
    assert sent_counts(database, mover) == [(W, 1), (W + 2, 0)]  # on B in W: its W+1 on A is a part
    assert sent_counts(database, newcomer) == [(W + 1, 1), (W + 2, 0)]
    detect.engine.dispose()


def test_a_new_owner_knows_who_saw_whom_in_the_window_its_predecessor_closed_last(database):
    """The detect node dies right after closing W; in W+1 broker node B is killed and its devices
    reconnect to A. The successor closes W+1 incomplete knowing, from the parts of W kept in
    PostgreSQL, which devices B saw: a device that moved off B gets no datapoint (A has only the
    rest of its window), one that reconnected to A after being on A, and a new device, get theirs."""
    clock, old, (steady, mover, back, newcomer), a, b = two_ending_brokers(database, "seen", 4)
    a.intake.message_sent(steady, "t/x", 10)
    a.intake.message_sent(back, "t/x", 10)
    b.intake.message_sent(mover, "t/x", 10)
    assert window_ended(W, clock, old, [a, b]) == 3  # closed by the old owner, which then dies

    a.intake.message_sent(steady, "t/x", 10)
    for thing in (mover, back, newcomer):  # B is killed in W+1: its devices reconnect to A
        a.intake.connect_attempt(thing, "10.0.0.7", True)
        a.intake.message_sent(thing, "t/x", 10)
    clock.now = (W + 2) * WINDOW_S + 0.2
    assert a.publish_due() == 4
    new = Detect(database, clock)
    new.acquire(P, 8)
    deliver(new, a.sent, 8)
    clock.now += new.collector.grace_s
    assert new.collector.close_due() == 0  # waits for B's end
    clock.now += new.collector.wait_s
    assert new.collector.close_due() == 3  # incomplete: every device but the one B saw in W

    assert sent_counts(database, steady) == [(W, 1), (W + 1, 1)]
    assert sent_counts(database, mover) == [(W, 1)]  # its W+1 on A is a part: none, not 1
    assert sent_counts(database, back) == [(W, 1), (W + 1, 1)]
    assert sent_counts(database, newcomer) == [(W + 1, 1)]
    for detect in (old, new):
        detect.engine.dispose()


def away_minutes(url: str, thing: str) -> list[tuple[int, int]]:
    """(window, aws:disconnect-duration) of each datapoint of the thing."""
    return [(round(ts / WINDOW_S) - 1, p["aws:disconnect-duration"]["count"]) for ts, p in datapoints(url, thing)]


def test_a_device_that_stays_away_keeps_its_disconnect_duration_across_takeovers(database):
    """The owner dies after closing the window a device left in: its successor counts the device's
    minutes away on from its disconnection (it gave 0, a false "alarm-cleared" for a device still
    offline, until it came back and left again). A node that gets the partition back after the
    device came back elsewhere does not take it as away any more."""
    clock, old, (leaver, steady), a, b = two_ending_brokers(database, "away", 2)
    a.intake.connect_attempt(leaver, "10.0.0.3", True)
    a.intake.connect_attempt(steady, "10.0.0.4", True)
    clock.now = W * WINDOW_S + 60
    a.intake.disconnect(leaver)  # 4 minutes before the window's end
    assert window_ended(W, clock, old, [a, b]) == 2
    a.intake.message_sent(steady, "t/x", 10)  # steady sends a message in every later window

    new = Detect(database, clock)  # the old owner dies (kill -9) once W is closed
    new.acquire(P, 8)
    assert window_ended(W + 1, clock, new, [a, b], 8) == 2  # the leaver, unregistered: known from its state
    assert away_minutes(database, leaver) == [(W, 4), (W + 1, 9)]  # not 0: it never came back

    new.owned.pop(P)  # handed over to a third node, where the device comes back in W+2
    new.collector.released(P)
    third = Detect(database, clock)
    third.acquire(P, 9)
    b.intake.connect_attempt(leaver, "10.0.0.5", True)
    a.intake.message_sent(steady, "t/x", 10)
    assert window_ended(W + 2, clock, third, [a, b], 9) == 2
    third.owned.pop(P)
    third.collector.released(P)
    new.acquire(P, 10)  # and back: what `new` knew of the device then is stale
    a.intake.message_sent(steady, "t/x", 10)
    assert window_ended(W + 3, clock, new, [a, b], 10) == 2
    assert away_minutes(database, leaver) == [(W, 4), (W + 1, 9), (W + 2, 0), (W + 3, 0)]
    assert away_minutes(database, steady) == [(W, 0), (W + 1, 0), (W + 2, 0), (W + 3, 0)]
    # Windows it spent wholly away are marked so (ML Detect neither learns nor judges them): W+1
    # only, on the successor that knew it away from the record alone.
    marked = [[AWAY_SERIES in p for _, p in datapoints(database, thing)] for thing in (leaver, steady)]
    assert marked == [[False, True, False, False], [False] * 4]
    for detect in (old, new, third):
        detect.engine.dispose()


def test_connections_recorded_before_a_release_that_does_not_record_them_are_not_trusted(database):
    """A rolling upgrade's node of the release before closed the partition's last window: it
    records no connections, so a device recorded away may have come back meanwhile. The next
    owner takes none of them as away (as before this record) and deletes them with its first close."""
    clock, old, (leaver,), a, b = two_ending_brokers(database, "trust", 1)
    a.intake.connect_attempt(leaver, "10.0.0.3", True)
    clock.now = W * WINDOW_S + 60
    a.intake.disconnect(leaver)
    assert window_ended(W, clock, old, [a, b]) == 1
    with old.engine.begin() as conn:  # what the release before does when it closes W+1: no seen window
        conn.execute(sa.text("UPDATE cluster_cloud_progress SET window_index = :w"), {"w": W + 1})
        assert disconnections.load(conn, P) == {leaver: W * WINDOW_S + 60}
    new = Detect(database, clock)
    new.acquire(P, 8)
    # It came back on B in W+1 (closed by the release before) and sends in W+2.
    clock.now = (W + 2) * WINDOW_S + 5
    b.intake.message_sent(leaver, "t/x", 10)
    assert window_ended(W + 2, clock, new, [a, b], 8) == 1
    assert away_minutes(database, leaver) == [(W, 4), (W + 2, 0)]  # not 14
    with new.engine.connect() as conn:
        assert disconnections.load(conn, P) == {}
    for detect in (old, new):
        detect.engine.dispose()


def test_a_device_that_left_in_a_window_closed_in_part_before_a_crash_stays_away(database, monkeypatch):
    """The owner stored a window's datapoints for the first things and died before the window's
    last transaction (which records the devices' connections): its successor reads what the
    closed things' parts, still kept, say of their connections."""
    monkeypatch.setattr(cloud_service, "BATCH_MAX", 1)  # a window closed in transactions of one thing
    clock, old, things, a, b = two_ending_brokers(database, "part", 2)
    first, second = sorted(things)
    for thing in (first, second):
        a.intake.connect_attempt(thing, "10.0.0.6", True)
    clock.now = W * WINDOW_S + 60
    a.intake.disconnect(first)
    dies_after_the_first_chunk(old, monkeypatch)
    with pytest.raises(Crash):
        window_ended(W, clock, old, [a, b])
    assert away_minutes(database, first) == [(W, 4)]

    new = Detect(database, clock)
    new.acquire(P, 8)
    clock.now += new.collector.grace_s
    new.collector.close_due()  # W for the second thing
    assert away_minutes(database, first) == [(W, 4)] and away_minutes(database, second) == [(W, 0)]
    a.intake.message_sent(second, "t/x", 10)
    assert window_ended(W + 1, clock, new, [a, b], 8) == 2
    assert away_minutes(database, first) == [(W, 4), (W + 1, 9)]
    assert away_minutes(database, second) == [(W, 0), (W + 1, 0)]
    newest = Detect(database, clock)  # recorded with the successor's close: a third owner knows it too
    newest.acquire(P, 9)
    a.intake.message_sent(second, "t/x", 10)
    assert window_ended(W + 2, clock, newest, [a, b], 9) == 2
    assert away_minutes(database, first)[-1] == (W + 2, 14)
    for detect in (old, new, newest):
        detect.engine.dispose()


def test_a_window_waits_for_a_silent_broker_node_then_closes_incomplete_and_a_new_owner_waits_too(database):
    clock, old, (on_a, on_b), a, b = two_ending_brokers(database, "silent", 2)
    sent = a.sent
    one_message_each_in_w(clock, (a, on_a), (b, on_b))
    deliver(old, sent)  # acked: the parts and the ends are kept in PostgreSQL

    # The owner dies (kill -9) before closing W; B is killed during W+1 (it ends nothing more).
    new = Detect(database, clock)
    new.acquire(P, 8)
    clock.now += new.collector.grace_s
    assert new.collector.close_due() == 2  # W: both ends, loaded with the partition
    a.intake.message_sent(on_a, "t/x", 10)
    assert window_ended(W + 1, clock, new, [a], 8) == 0  # W+1 waits for B's end
    clock.now += new.collector.wait_s - 0.5
    assert new.collector.close_due() == 0
    clock.now += 0.5
    assert new.collector.close_due() == 1  # waited out: incomplete, A's device only

    # W+2: B was silent for longer than the wait: no longer expected, the window is complete.
    assert window_ended(W + 2, clock, new, [a], 8) == 2

    assert sent_counts(database, on_a) == [(W, 1), (W + 1, 1), (W + 2, 0)]
    assert sent_counts(database, on_b) == [(W, 1), (W + 2, 0)]
    with new.engine.connect() as conn:  # B's end expects nothing any more: deleted, A's kept
        assert [end.node for end in cluster_parts.load_ends(conn, P)] == ["node-a"]
    for detect in (old, new):
        detect.engine.dispose()


def connection_points(url: str, thing: str) -> list[tuple[int, int, list[str] | None, bool]]:
    """(window, aws:disconnect-duration, aws:source-ip-address, marked away) of each datapoint."""
    return [(round(ts / WINDOW_S) - 1, p["aws:disconnect-duration"]["count"],
             p.get("aws:source-ip-address", {}).get("cidrs"), AWAY_SERIES in p) for ts, p in datapoints(url, thing)]


def taken_over_then_b_killed(database: str, clock: Clock, a: EndingBroker, steady: str) -> Detect:
    """A new owner takes P over after W (its predecessor died); broker node B is killed in W+1:
    W+1 waits for B's end, then closes incomplete, for the device on A that sent a message."""
    new = Detect(database, clock)
    new.acquire(P, 8)
    a.intake.message_sent(steady, "t/x", 10)
    assert window_ended(W + 1, clock, new, [a], 8) == 0
    clock.now += new.collector.wait_s
    assert new.collector.close_due() == 1
    return new


def test_the_devices_of_a_killed_broker_node_are_disconnected_unless_they_connected_elsewhere(database):
    """Broker node B is killed in W+1: it tells nobody its devices' connections ended. Once B is
    no longer waited for, a device that stayed away counts as disconnected since the first window
    B did not vouch for (it counted as connected, from B's address, for ever); one that moved to A
    is connected there. B comes back (it was only cut off from NATS): its device's traffic says
    it is connected after all."""
    clock, detect, (stays, mover, steady), a, b = two_ending_brokers(database, "killed", 3, hosts=True)
    b.intake.connect_attempt(stays, "10.0.0.1", True)
    b.intake.connect_attempt(mover, "10.0.0.2", True)
    a.intake.connect_attempt(steady, "10.0.0.3", True)
    assert window_ended(W, clock, detect, [a, b]) == 3

    a.intake.connect_attempt(mover, "10.0.0.4", True)  # B is killed in W+1: one device reconnects to A
    a.intake.message_sent(steady, "t/x", 10)
    assert window_ended(W + 1, clock, detect, [a]) == 0  # waits for B's end
    clock.now += detect.collector.wait_s
    assert detect.collector.close_due() == 1  # incomplete: steady only; B is no longer waited for
    with detect.engine.connect() as conn:
        assert disconnections.load(conn, P) == {stays: (W + 1) * WINDOW_S}
    assert window_ended(W + 2, clock, detect, [a]) == 3

    assert connection_points(database, stays) == [(W, 0, ["10.0.0.1"], False), (W + 2, 10, None, True)]
    assert connection_points(database, mover) == [(W, 0, ["10.0.0.2"], False), (W + 2, 0, ["10.0.0.4"], False)]
    assert connection_points(database, steady) == [(W, 0, ["10.0.0.3"], False), (W + 1, 0, ["10.0.0.3"], False),
                                                    (W + 2, 0, ["10.0.0.3"], False)]

    b.intake.message_sent(stays, "t/x", 10)  # B is back in W+3, its device still connected to it
    assert window_ended(W + 3, clock, detect, [a, b]) == 3
    assert connection_points(database, stays)[-1] == (W + 3, 0, ["10.0.0.1"], False)
    with detect.engine.connect() as conn:
        assert disconnections.load(conn, P) == {}
    detect.engine.dispose()


def test_the_window_closed_with_the_one_a_killed_broker_node_left_incomplete_has_its_devices_away(database):
    """B is killed in W+1; W+1 waits for B's end, and W+2 ends meanwhile: both close in one round.
    W+2, wholly after the kill, has B's device away. Before, the devices were taken as
    disconnected only once the round was over: W+2 had it connected, with its old address."""
    clock, detect, (stays, steady), a, b = two_ending_brokers(database, "round", 2, hosts=True)
    sent = a.sent
    b.intake.connect_attempt(stays, "10.0.0.1", True)
    a.intake.connect_attempt(steady, "10.0.0.3", True)
    assert window_ended(W, clock, detect, [a, b]) == 2
    a.intake.message_sent(steady, "t/x", 10)
    assert window_ended(W + 1, clock, detect, [a]) == 0  # waits for B's end
    clock.now = (W + 3) * WINDOW_S + 0.2  # W+2 ends too before the wait is over
    a.publish_due()
    deliver(detect, sent)
    clock.now += detect.collector.grace_s
    assert detect.collector.close_due() == 3  # W+1 for steady, W+2 for both
    assert connection_points(database, stays) == [(W, 0, ["10.0.0.1"], False), (W + 2, 10, None, True)]
    detect.engine.dispose()


def test_a_new_owner_knows_which_devices_a_killed_broker_node_had_from_the_record(database):
    """The detect node dies after closing W, B is killed in W+1: the successor knows from the record
    of where connections are (written with W's close) that the device was on B, and takes it as
    disconnected too."""
    clock, old, (stays, steady), a, b = two_ending_brokers(database, "successor", 2, hosts=True)
    b.intake.connect_attempt(stays, "10.0.0.1", True)
    a.intake.connect_attempt(steady, "10.0.0.3", True)
    assert window_ended(W, clock, old, [a, b]) == 2
    new = taken_over_then_b_killed(database, clock, a, steady)
    assert window_ended(W + 2, clock, new, [a], 8) == 2
    assert connection_points(database, stays) == [(W, 0, ["10.0.0.1"], False), (W + 2, 10, None, True)]
    for detect in (old, new):
        detect.engine.dispose()


def test_a_new_owner_knows_where_its_idle_devices_are_connected_from_the_record(database):
    """The devices connect in W and are idle after; the owner closes W and W+1 and dies. Its
    successor reads where their connections are (broker node, address) from the record: B is
    killed in W+2 and its idle device counts as disconnected; the idle device on A keeps its
    address. Before, the successor knew neither (the device on B counted as connected for ever,
    the one on A had no address any more)."""
    clock, old, (on_b, on_a, steady), a, b = two_ending_brokers(database, "record", 3, hosts=True)
    b.intake.connect_attempt(on_b, "10.0.0.1", True)
    a.intake.connect_attempt(on_a, "10.0.0.2", True)
    a.intake.connect_attempt(steady, "10.0.0.3", True)
    assert window_ended(W, clock, old, [a, b]) == 3
    a.intake.message_sent(steady, "t/x", 10)
    assert window_ended(W + 1, clock, old, [a, b]) == 3

    new = Detect(database, clock)  # the owner dies once W+1 is closed; B is killed in W+2
    new.acquire(P, 8)
    a.intake.message_sent(steady, "t/x", 10)
    assert window_ended(W + 2, clock, new, [a], 8) == 0
    clock.now += new.collector.wait_s
    assert new.collector.close_due() == 1  # incomplete: steady only
    a.intake.message_sent(steady, "t/x", 10)
    assert window_ended(W + 3, clock, new, [a], 8) == 3
    assert connection_points(database, on_b)[-1] == (W + 3, 10, None, True)
    assert connection_points(database, on_a)[-1] == (W + 3, 0, ["10.0.0.2"], False)
    assert connection_points(database, steady)[-1] == (W + 3, 0, ["10.0.0.3"], False)
    with new.engine.connect() as conn:
        assert sorted(cluster_parts.load_connections(conn, P)) == sorted([on_a, steady])
    for detect in (old, new):
        detect.engine.dispose()


def test_a_broker_node_still_a_member_loses_no_device_and_one_killed_later_does(database):
    """B's end of W+1 is lost (a JetStream election: B lives, and is still a member): W+1 closes
    incomplete and B is no longer waited for, but its idle device stays connected, and B's next
    end clears the suspicion. Before, one lost end took every device of B as disconnected. Then B
    is killed while still listed as a member (its entry expires a lease TTL later): its device is
    taken as disconnected at the first close after B is no member any more, since B's last end."""
    clock, detect, (idle, steady), a, b = two_ending_brokers(database, "member", 2, hosts=True)
    detect.members = {"node-a", "node-b"}
    b.intake.connect_attempt(idle, "10.0.0.1", True)
    a.intake.connect_attempt(steady, "10.0.0.3", True)
    assert window_ended(W, clock, detect, [a, b]) == 2
    a.intake.message_sent(steady, "t/x", 10)
    b.down = {"end"}  # B's end of W+1 is not stored
    assert window_ended(W + 1, clock, detect, [a, b]) == 0
    b.down = set()
    clock.now += detect.collector.wait_s
    assert detect.collector.close_due() == 1  # incomplete: steady only
    a.intake.message_sent(steady, "t/x", 10)
    assert window_ended(W + 2, clock, detect, [a, b]) == 2
    assert connection_points(database, idle)[-1] == (W + 2, 0, ["10.0.0.1"], False)

    a.intake.message_sent(steady, "t/x", 10)  # B is killed in W+3 and stays a member a while
    assert window_ended(W + 3, clock, detect, [a]) == 0
    clock.now += detect.collector.wait_s
    assert detect.collector.close_due() == 1
    assert window_ended(W + 4, clock, detect, [a]) == 2  # still a member: not taken as lost yet
    assert connection_points(database, idle)[-1] == (W + 4, 0, ["10.0.0.1"], False)
    detect.members = {"node-a"}  # its entry expired
    assert window_ended(W + 5, clock, detect, [a]) == 2  # lost at this close, since W+3 began
    assert window_ended(W + 6, clock, detect, [a]) == 2
    assert connection_points(database, idle)[-1] == (W + 6, 20, None, True)
    detect.engine.dispose()


def test_a_refused_client_id_seen_before_a_takeover_is_not_taken_for_a_device_of_a_killed_node(database):
    """Someone tries an unknown client id on B (refused) in the window before a takeover; B is
    killed after it. The id is no device: no datapoint after the window of its refusal, no record
    of being away.
    Before, the successor took everyone seen by B in that window for connected through it."""
    clock, old, (junk, steady), a, b = two_ending_brokers(database, "refused", 2, hosts=True)
    b.intake.connect_attempt(junk, "10.0.0.9", False)
    a.intake.connect_attempt(steady, "10.0.0.3", True)
    assert window_ended(W, clock, old, [a, b]) == 2  # the refused CONNECT counts in W
    new = taken_over_then_b_killed(database, clock, a, steady)
    assert window_ended(W + 2, clock, new, [a], 8) == 1
    assert [window for window, *_ in connection_points(database, junk)] == [W]
    with new.engine.connect() as conn:
        assert disconnections.load(conn, P) == {}
    for detect in (old, new):
        detect.engine.dispose()


def test_a_device_away_when_its_partition_comes_back_keeps_its_disconnection_when_its_old_node_dies(database):
    """D1 follows the device to B; the partition moves to D2, where the device disconnects, and
    back to D1 before D1's next close. B is killed: the device stays away since it left, not
    since B died. Before, D1's stale follow reset its disconnection to B's death."""
    clock, d1, (leaver,), a, b = two_ending_brokers(database, "stale", 1, hosts=True)
    b.intake.connect_attempt(leaver, "10.0.0.1", True)
    assert window_ended(W, clock, d1, [a, b]) == 1
    d1.owned.pop(P)
    d1.collector.released(P)
    d2 = Detect(database, clock)
    d2.acquire(P, 8)
    clock.now = (W + 1) * WINDOW_S + 60
    b.intake.disconnect(leaver)
    assert window_ended(W + 1, clock, d2, [a, b], 8) == 1
    d2.owned.pop(P)
    d2.collector.released(P)
    d1.acquire(P, 9)  # back before D1 closed anything
    assert window_ended(W + 2, clock, d1, [a], 9) == 0  # B is killed in W+2
    clock.now += d1.collector.wait_s
    d1.collector.close_due()
    assert window_ended(W + 3, clock, d1, [a], 9) == 1
    assert connection_points(database, leaver)[-1] == (W + 3, 14, None, True)
    for detect in (d1, d2):
        detect.engine.dispose()


def test_a_broker_node_that_stops_cleanly_is_not_waited_for(database):
    clock, detect, (on_a, on_b), a, b = two_ending_brokers(database, "stop", 2)
    sent = a.sent
    one_message_each_in_w(clock, (a, on_a), (b, on_b))
    clock.now += 60
    b.intake.message_sent(on_b, "t/x", 10)
    asyncio.run(b.publisher.publish_open())  # a graceful stop in W+1: its last end
    deliver(detect, sent)
    clock.now = (W + 1) * WINDOW_S + detect.collector.grace_s
    assert detect.collector.close_due() == 2
    assert window_ended(W + 1, clock, detect, [a]) == 2  # W+1: B vouched for it, last
    assert window_ended(W + 2, clock, detect, [a]) == 2  # W+2: B is gone, not waited for
    assert sent_counts(database, on_b) == [(W, 1), (W + 1, 1), (W + 2, 0)]
    detect.engine.dispose()


def test_a_publisher_sends_no_end_while_a_live_node_cannot_read_one_and_at_most_one_per_interval(database):
    clock = Clock(W * WINDOW_S + 10)
    sent: list[Delivery] = []
    readable = [False]

    async def publish(thing: str, payload: bytes, message_id: str) -> None:
        sent.append(Delivery(partition_of(thing), thing, payload, len(sent) + 1, 1))

    async def publish_end(partition: int, payload: bytes, message_id: str) -> None:
        sent.append(Delivery(partition, "", payload, len(sent) + 1, 1))
    publisher = WindowPublisher(CloudEventIntake(WINDOW_S, clock), publish, "node-a", clock=clock,
                                publish_end=publish_end, partitions=4, ends_readable=lambda: readable[0],
                                end_interval_s=60.0)
    clock.now = (W + 1) * WINDOW_S + 0.2
    asyncio.run(publisher.publish_due())
    assert sent == []
    readable[0] = True
    clock.now += WINDOW_S
    asyncio.run(publisher.publish_due())
    assert sorted(d.partition for d in sent) == [0, 1, 2, 3]  # one end per partition
    clock.now += WINDOW_S
    asyncio.run(publisher.publish_due())  # within the interval: the next end vouches for this window too
    assert len(sent) == 4
    asyncio.run(publisher.publish_open())  # a stop: the last end, whatever the interval
    assert len(sent) == 8


def test_a_broker_node_that_begins_later_lost_none_of_the_windows_before(database):
    """A node that starts (or starts again: a new publisher) during W+1 ends W+1 with a run that
    begins there; a detect node that closes W only then (it lagged) must not read that as W lost."""
    clock = Clock(W * WINDOW_S + 10)
    detect = Detect(database, clock)
    detect.acquire(P, 7)
    busy, idle = things_in(P, 2, "begin")
    sent: list[Delivery] = []
    a = EndingBroker("node-a", clock, sent)
    a.intake.message_sent(busy, "t/x", 10)
    a.intake.connect_attempt(idle, "10.0.0.1", True)
    clock.now = (W + 1) * WINDOW_S + 0.2
    a.publish_due()
    clock.now += 30
    c = EndingBroker("node-c", clock, sent)
    c.intake.message_sent(busy, "t/x", 10)
    incomplete = WINDOWS_INCOMPLETE._value.get()
    assert window_ended(W + 1, clock, detect, [a, c]) == 4
    assert WINDOWS_INCOMPLETE._value.get() == incomplete  # W and W+1, both complete
    assert sent_counts(database, busy) == [(W, 1), (W + 1, 1)]
    assert sent_counts(database, idle) == [(W, 0), (W + 1, 0)]
    detect.engine.dispose()


def test_no_window_waits_for_ends_while_a_live_node_cannot_read_them(database):
    """A rolling upgrade: a node of the release before joins, the publishers stop sending ends, and
    a detect node that knew them must not wait for their next ones (nor close windows incomplete)."""
    clock, detect, (on_a, on_b), a, b = two_ending_brokers(database, "mixed", 2)
    in_use = [True]
    detect.collector._ends_in_use = lambda: in_use[0]
    one_message_each_in_w(clock, (a, on_a), (b, on_b))
    deliver(detect, a.sent)
    clock.now += detect.collector.grace_s
    assert detect.collector.close_due() == 2
    in_use[0] = False
    b.publisher._ends_readable = lambda: False  # B stops sending ends (A's stay: it closes W+1 either way)
    b.intake.message_sent(on_b, "t/x", 10)
    incomplete = WINDOWS_INCOMPLETE._value.get()
    assert window_ended(W + 1, clock, detect, [a, b]) == 2  # at its grace, B's part in
    assert WINDOWS_INCOMPLETE._value.get() == incomplete
    assert sent_counts(database, on_b) == [(W, 1), (W + 1, 1)]
    detect.engine.dispose()


def test_a_window_waits_while_its_partition_is_not_read_through_then_at_most_the_longest_wait(database):
    """A detect node behind its backlog has not read a publisher's end yet: that is no reason to
    close the window without its parts (an operator's trial: 36 % of device-windows 0 under load)."""
    clock = Clock(W * WINDOW_S + 10)
    detect = Detect(database, clock)
    detect.acquire(P, 7)
    read_through = [float("-inf")]
    detect.collector._read_through = lambda partition: read_through[0]
    on_a, on_b = things_in(P, 2, "behind")
    backlog: list[Delivery] = []
    a, b = EndingBroker("node-a", clock, []), EndingBroker("node-b", clock, backlog)
    one_message_each_in_w(clock, (a, on_a), (b, on_b))
    deliver(detect, a.sent)
    deliver(detect, backlog)
    clock.now += detect.collector.grace_s
    assert detect.collector.close_due() == 2

    a.intake.message_sent(on_a, "t/x", 10)
    b.intake.message_sent(on_b, "t/x", 10)
    clock.now = (W + 2) * WINDOW_S + 0.2
    a.publish_due()
    b.publish_due()
    deliver(detect, a.sent)  # B's part and end of W+1 are still in the partition, behind a backlog
    clock.now += detect.collector.grace_s + detect.collector.wait_s + 1
    assert detect.collector.close_due() == 0  # the wait is over, but the partition was not read through
    deliver(detect, backlog)
    read_through[0] = clock.now
    assert detect.collector.close_due() == 2  # complete: B's part was there
    assert sent_counts(database, on_b) == [(W, 1), (W + 1, 1)]

    # W+2: B is killed; the reader never catches up (saturated): the longest wait closes it.
    a.intake.message_sent(on_a, "t/x", 10)
    clock.now = (W + 3) * WINDOW_S + 0.2
    a.publish_due()
    deliver(detect, a.sent)
    clock.now += detect.collector.grace_s + detect.collector.wait_s + 1
    assert detect.collector.close_due() == 0
    clock.now = (W + 3) * WINDOW_S + detect.collector.grace_s + 120
    assert detect.collector.close_due() == 1  # incomplete: A's device only
    assert sent_counts(database, on_b) == [(W, 1), (W + 1, 1)]
    detect.engine.dispose()


def test_ends_are_tried_even_when_the_parts_took_the_whole_round(database):
    """A loaded machine (or a slow NATS) can spend the round's retry time on the parts themselves:
    the ends are still published once (a full CI run at load 35 saw a clean stop's ends given up)."""
    clock = Clock(W * WINDOW_S + 10)
    ends: list[int] = []

    async def slow_publish(thing: str, payload: bytes, message_id: str) -> None:
        await asyncio.sleep(0.3)  # stored, but only after the round's retry time

    async def publish_end(partition: int, payload: bytes, message_id: str) -> None:
        ends.append(partition)
    publisher = WindowPublisher(CloudEventIntake(WINDOW_S, clock), slow_publish, "node-a", clock=clock,
                                retry_s=0.2, publish_end=publish_end, partitions=4, end_interval_s=0.0)
    publisher.intake.message_sent("slow-thing", "t/x", 10)
    clock.now = (W + 1) * WINDOW_S + 0.2
    assert asyncio.run(publisher.publish_due()) == 1
    assert sorted(ends) == [0, 1, 2, 3]


def test_a_device_seen_by_a_publisher_that_went_silent_gets_no_part_count_without_reconnecting(database):
    """An external broker's events reader taken over by another node: the devices stay connected to
    the broker, and the new reader counts only what follows its start; a device the silent reader
    saw in the window before has only a part in the new reader's, though it made no connection."""
    clock, detect, (steady, later), a, b = two_ending_brokers(database, "reader", 2)
    for _ in range(5):
        a.intake.message_sent(steady, "t/x", 10)
    b.publish_due()  # B publishes ends too (it has nothing to read yet)
    assert window_ended(W, clock, detect, [a, b]) == 1
    for _ in range(2):  # A is killed in W+1; B reads from then on: the rest of steady's window
        b.intake.message_sent(steady, "t/x", 10)
    b.intake.connect_attempt(later, "10.0.0.9", True)
    b.intake.message_sent(later, "t/x", 10)
    assert window_ended(W + 1, clock, detect, [b]) == 0  # waits for A's end
    clock.now += detect.collector.wait_s
    assert detect.collector.close_due() == 1
    assert sent_counts(database, steady) == [(W, 5)]  # not 2: A held the rest of its W+1
    assert sent_counts(database, later) == [(W + 1, 1)]
    detect.engine.dispose()


def test_a_batch_part_of_another_partition_is_refused_and_the_rest_of_the_batch_counted(database):
    """A node of another configuration (another partition count) batches a thing that is not this
    partition's: that part is refused (logged at most a few times per interval, not once per part)
    and the batch's other parts count."""
    from iotdefender.cloud.cluster_windows import CloudWindowParts, DevicePart, encode

    clock = Clock(W * WINDOW_S + 10)
    detect = Detect(database, clock)
    detect.acquire(P, 7)
    (ours,), (stranger,) = things_in(P, 1, "bp"), things_in(P + 1, 1, "bp")
    part = ClientWindow(sent={"t": 6}, sent_max_bytes={"t": 10}, sent_min_bytes={"t": 10})
    batch = CloudWindowParts("node-x", P, W, WINDOW_S, [DevicePart(stranger, part), DevicePart(ours, part)])
    asyncio.run(detect.handle(P, 7, [Delivery(P, "", encode(batch), 1, 1)]))
    clock.now = (W + 1) * WINDOW_S + detect.collector.grace_s + 0.1
    detect.collector.close_due()
    [(_, points)] = datapoints(database, ours)
    assert points["aws:num-messages-sent"] == {"count": 6}
    assert datapoints(database, stranger) == []


def test_ends_handed_over_at_once_by_many_partitions_are_kept_in_one_transaction_each_partition_fenced(database):
    """Every publisher ends a window in all 64 partitions at once, so their readers hand the ends
    over together. Kept one transaction each, 64 commits queued per publisher and end, and a report
    behind its partition's end waited for that queue (bench/README.md, one device, one report at a
    time). Those handed over while a keep runs are kept together in one transaction; a partition a
    newer owner claimed is refused on its own (``Fenced``) and the others are kept."""
    clock = Clock(W * WINDOW_S + 10)
    detect, newer = Detect(database, clock), Detect(database, clock)
    partitions = list(range(8))
    for partition in partitions:
        detect.acquire(partition, 7)
    newer.acquire(5, 8)  # partition 5 moved on: this node's token 7 is superseded
    commits: list[int] = []
    sa.event.listen(detect.engine, "commit", lambda conn: commits.append(1))

    def end(partition: int) -> Delivery:
        return Delivery(partition, "", end_of_w(), 100 + partition, 1)

    async def readers() -> list[BaseException | None]:  # one event loop, as a node's
        return await asyncio.gather(*(detect.handle(p, 7, [end(p)]) for p in partitions), return_exceptions=True)

    answers = asyncio.run(readers())
    assert [type(answer) for answer in answers] == [type(None)] * 5 + [Fenced] + [type(None)] * 2
    assert len(commits) <= 2  # the first end alone, the others with it or in one more
    with detect.engine.connect() as conn:
        kept = {p: [e.node for e in cluster_parts.load_ends(conn, p)] for p in partitions}
    assert kept == {p: ([] if p == 5 else ["node-a"]) for p in partitions}
    for node in (detect, newer):
        node.engine.dispose()


def test_parts_handed_over_at_once_by_many_partitions_go_in_bounded_transactions(database, monkeypatch):
    """At a window's end every partition hands its devices' parts over at once. Kept in one
    transaction, the parts of 200,000 devices held every fence row of the node (which a node
    claiming a partition, window closes and sweeps wait for) for 15 s (bench/cloud_parts.py); at most
    ``PARTS_PER_TRANSACTION`` parts now go in one, and every part is kept."""
    from iotdefender.cloud import cluster_windows
    from iotdefender.cloud.cluster_windows import CloudWindowParts, DevicePart, encode

    monkeypatch.setattr(cluster_windows, "PARTS_PER_TRANSACTION", 5)
    clock = Clock(W * WINDOW_S + 10)
    detect = Detect(database, clock)
    partitions = list(range(6))
    for partition in partitions:
        detect.acquire(partition, 7)
    part = ClientWindow(sent={"t": 2}, sent_max_bytes={"t": 10}, sent_min_bytes={"t": 10})
    things = {p: things_in(p, 3, "bounded") for p in partitions}
    commits: list[int] = []
    sa.event.listen(detect.engine, "commit", lambda conn: commits.append(1))

    def parts(partition: int) -> Delivery:
        batch = CloudWindowParts("node-a", partition, W, WINDOW_S, [DevicePart(t, part) for t in things[partition]])
        return Delivery(partition, "", encode(batch), 200 + partition, 1)

    async def readers() -> list[BaseException | None]:
        return await asyncio.gather(*(detect.handle(p, 7, [parts(p)]) for p in partitions), return_exceptions=True)

    assert asyncio.run(readers()) == [None] * len(partitions)
    assert len(commits) == len(partitions)  # 3 parts each, at most 5 in one transaction: one each
    with detect.engine.connect() as conn:
        kept = {p: sorted(stored.thing for stored in cluster_parts.load(conn, p)[1]) for p in partitions}
    assert kept == {p: sorted(things[p]) for p in partitions}
    detect.engine.dispose()


def end_of_w() -> bytes:
    return encode(CloudWindowEnd("node-a", W, W, W, WINDOW_S))


def test_ends_kept_together_in_an_outage_fail_at_once_and_are_kept_once_it_is_over(tmp_path: Path, monkeypatch):
    """Items that fail together because the database is away are not tried again one by one (each
    try would cost a connection timeout when packets are dropped, as for report batches,
    test_partition_store): every one is answered unavailable, and kept when the database is back."""
    cluster = PostgresCluster()
    cluster.start()
    try:
        url = prepared(cluster, tmp_path)
        detect = Detect(url, Clock(W * WINDOW_S + 10))
        partitions = [1, 2, 3]
        for partition in partitions:
            detect.acquire(partition, 7)
        ends = [(p, 7, [], [CloudWindowEnd("node-a", W, W, W, WINDOW_S).end()]) for p in partitions]
        attempts = connection_attempts.counted(monkeypatch)
        cluster.halt()
        detect.engine.dispose()  # the pooled connections died with the server
        assert [type(answer) for answer in detect.collector.keep_many(ends)] == [StoreUnavailable] * 3
        assert len(attempts) == 1  # one try for the three, not one more for each
        cluster.resume()
        assert detect.collector.keep_many(ends) == [None] * 3
        with detect.engine.connect() as conn:
            assert [[e.node for e in cluster_parts.load_ends(conn, p)] for p in partitions] == [["node-a"]] * 3
        detect.engine.dispose()
    finally:
        cluster.stop()


def two_partitions_published(database: str, prefix: str, away: bool = False
                             ) -> tuple[Clock, Detect, int, str, str, list[Delivery]]:
    """A detect node owning P and the next partition, one device of each connected in window W,
    whose parts a broker node published as it ended (the second device left in it if ``away``):
    the clock, the node, the second partition, the devices and the parts' messages."""
    clock = Clock(W * WINDOW_S + 10)
    detect = Detect(database, clock)
    other = P + 1
    detect.acquire(P, 7)
    detect.acquire(other, 7)
    (first,), (second,) = things_in(P, 1, prefix), things_in(other, 1, prefix)
    sent: list[Delivery] = []
    a = broker("node-a", clock, sent)
    for thing in (first, second):
        a.intake.connect_attempt(thing, "10.0.0.1", True)
    if away:
        clock.now += 5
        a.intake.disconnect(second)
    clock.now = (W + 1) * WINDOW_S + 0.2
    assert asyncio.run(a.publish_due()) == 2
    return clock, detect, other, first, second, sent


def two_partitions_seen(database: str, away: bool = False) -> tuple[Clock, Detect, int, str, str]:
    """A detect node owning P and the next partition, one device of each seen in a closed window
    (the second one's left in it if ``away``): the clock, the node, the second partition and the devices."""
    clock, detect, other, kept, gone, sent = two_partitions_published(database, "seen", away)
    for partition in (P, other):
        asyncio.run(detect.handle(partition, 7, [d for d in sent if d.partition == partition]))
    clock.now = (W + 1) * WINDOW_S + detect.collector.grace_s + 0.1
    assert detect.collector.close_due() == 2
    assert {kept, gone} <= detect.collector.cloud.aggregator.seen
    return clock, detect, other, kept, gone


def test_a_released_partitions_devices_leave_the_clients_seen_at_the_next_close(database):
    """A detect node kept the devices of every partition it ever owned among the clients seen, all
    read at each close and hashed to be left out: towards the whole fleet with each rebalance."""
    clock, detect, other, kept, gone = two_partitions_seen(database)
    detect.collector.released(other)  # its lease is let go after (ownership._release): still "owned" then
    clock.now += WINDOW_S  # the next window: idle; the device of P still gets its 0
    assert detect.collector.close_due() == 1
    detect.owned.pop(other)
    assert kept in detect.collector.cloud.aggregator.seen and gone not in detect.collector.cloud.aggregator.seen
    assert [p["aws:num-messages-sent"]["count"] for _, p in datapoints(database, kept)] == [0, 0]
    detect.engine.dispose()


def test_a_partition_taken_again_while_a_close_forgets_it_keeps_its_devices(database):
    """Taken again while the close hashes the clients seen (the event loop runs ``resume``
    meanwhile): the device it knows away stays seen and keeps getting its datapoints."""
    clock, detect, other, _, gone = two_partitions_seen(database, away=True)
    detect.owned.pop(other)
    detect.collector.released(other)
    collector = detect.collector
    hashing = collector._partition
    taken: list[bool] = []

    def taken_again_at_the_first_hash(thing: str) -> int:
        if not taken:
            taken.append(True)
            detect.acquire(other, 8)
        return hashing(thing)

    collector._partition = taken_again_at_the_first_hash  # type: ignore[method-assign]
    clock.now += WINDOW_S
    collector.close_due()
    collector._partition = hashing  # type: ignore[method-assign]
    assert taken and gone in collector.cloud.aggregator.seen
    for _ in range(2):
        clock.now += WINDOW_S
        collector.close_due()
    assert [ts for ts, _ in datapoints(database, gone)] == [(W + n) * WINDOW_S for n in range(1, 5)]  # every window
    detect.engine.dispose()


def test_a_reader_stores_the_reports_behind_a_window_part_while_the_part_waits_to_be_kept(database, jetstream,
                                                                                         monkeypatch):
    """The partitions' readers set a window's parts aside (``WindowCollector.aside``, as ``serve``
    builds them). At a window's end every partition's parts are kept one transaction after another;
    here Q's keep is slow, and P's part waits behind it. A report of P published after P's part is
    stored meanwhile: before, it waited for its partition's part, and so for Q's keep. Once Q's keep
    ends, P's part is kept, held for the window's close, and acked."""
    clock, detect, q, on_p, on_q, sent = two_partitions_published(database, "aside")
    payloads = {delivery.thing_name: delivery.payload for delivery in sent}
    release, q_waits = threading.Event(), threading.Event()
    keep_sets = cluster_parts.keep_sets

    def slow_for_q(conn: Any, partition: int, parts: Any) -> None:
        if partition == q:
            q_waits.set()
            assert release.wait(30)
        keep_sets(conn, partition, parts)

    monkeypatch.setattr(cluster_parts, "keep_sets", slow_for_q)

    async def go() -> None:
        nc = await nats.connect(servers=jetstream.urls)
        js = nc.jetstream()
        topology = Topology()
        await ensure(js, topology)
        publisher = ReportPublisher(js, topology)
        readers = [PartitionReader(js, topology, partition, detect.handle, 7, lambda: True,
                                   aside=detect.collector.aside()) for partition in (P, q)]
        for reader in readers:
            await reader.start()
        await publisher.publish(on_q, payloads[on_q], "cloud/node-a/q")
        while not q_waits.is_set():
            await asyncio.sleep(0.02)
        await publisher.publish(on_p, payloads[on_p], "cloud/node-a/p")
        await asyncio.sleep(0.3)  # P's part is set aside, its keep queued behind Q's
        report = ReportMessage(on_p, {"aws:num-listening-tcp-ports": {"count": 1}}, clock.now, 1, "json",
                               "iotdefender.replies.b1")
        await publisher.publish(on_p, encode_report(report), report_message_id(on_p, 1))
        for _ in range(200):
            if stored_report_id(detect, on_p) == 1:
                break
            await asyncio.sleep(0.05)
        assert stored_report_id(detect, on_p) == 1  # stored while P's part waits
        with detect.engine.connect() as conn:
            assert cluster_parts.load(conn, P)[1] == []  # not kept yet
        assert (await js.stream_info(topology.stream)).state.messages == 2  # the report acked, the parts not
        release.set()
        for _ in range(200):
            if (await js.stream_info(topology.stream)).state.messages == 0:
                break
            await asyncio.sleep(0.05)
        assert (await js.stream_info(topology.stream)).state.messages == 0
        for reader in readers:
            await reader.stop()
        await nc.close()

    asyncio.run(asyncio.wait_for(go(), 60))
    with detect.engine.connect() as conn:
        assert [part.thing for part in cluster_parts.load(conn, P)[1]] == [on_p]
    assert detect.collector.close_due() == 0  # within the grace
    clock.now = (W + 1) * WINDOW_S + detect.collector.grace_s + 0.1
    assert detect.collector.close_due() == 2  # both devices' windows, from the parts held
    [(_, points)] = datapoints(database, on_p)
    assert points["aws:num-messages-sent"] == {"count": 0}  # its window, closed from its part
    detect.engine.dispose()


def test_a_partition_claimed_by_another_node_during_a_close_leaves_the_others_records_kept(database):
    """A window is closed for P and the next partition, and another node claims the next one just
    before the closing's last transaction: P's mark, its devices' disconnections and where their
    connections are are kept; the claimed partition's are left to its new owner. Before, the one
    fenced partition rolled back the whole transaction, P's records included."""
    clock, detect, other, kept, gone, sent = two_partitions_published(database, "fenced", away=True)
    for partition in (P, other):
        asyncio.run(detect.handle(partition, 7, [d for d in sent if d.partition == partition]))
    with detect.engine.begin() as conn:
        fencing.claim(conn, other, 99)
    clock.now = (W + 1) * WINDOW_S + detect.collector.grace_s + 0.1
    detect.collector.close_due()
    with detect.engine.connect() as conn:
        assert cluster_parts.load(conn, P)[0] == cluster_parts.Mark(W, None)
        assert cluster_parts.load(conn, other)[0] is None
        assert set(cluster_parts.load_connections(conn, P)) == {kept}
        assert cluster_parts.load_connections(conn, other) == {}
        assert disconnections.load(conn, other) == {}  # its device left: its new owner records it
    detect.engine.dispose()


def test_where_connections_are_is_recorded_in_bounded_transactions(database, monkeypatch):
    """At a node's first windows every connected device is recorded: in transactions of a bounded
    number of devices (here one), each fenced, before the marks (those hold every partition's
    fence row while they run)."""
    from iotdefender.cloud import cluster_windows
    monkeypatch.setattr(cluster_windows, "PARTS_PER_TRANSACTION", 1)
    recorded: list[int] = []
    record = cluster_parts.record_connections
    monkeypatch.setattr(cluster_parts, "record_connections",
                        lambda conn, changes, partition_of: recorded.append(len(changes)) or record(conn, changes,
                                                                                                    partition_of))
    clock, detect, other, first, second, sent = two_partitions_published(database, "bounded")
    for partition in (P, other):
        asyncio.run(detect.handle(partition, 7, [d for d in sent if d.partition == partition]))
    clock.now = (W + 1) * WINDOW_S + detect.collector.grace_s + 0.1
    assert detect.collector.close_due() == 2
    assert recorded == [1, 1]
    with detect.engine.connect() as conn:
        assert cluster_parts.load_connections(conn, P) == {first: ("node-a", "10.0.0.1", W * WINDOW_S + 10)}
        assert cluster_parts.load_connections(conn, other) == {second: ("node-a", "10.0.0.1", W * WINDOW_S + 10)}
    detect.engine.dispose()
