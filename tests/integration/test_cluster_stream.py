"""Cluster mode's JetStream layer against real nats-server 2.15 processes (one, or three routed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import nats
import pytest

from iotdefender.cluster.ownership import Ownership, lease_key
from iotdefender.cluster.partitions import partition_of
from iotdefender.cluster.report_stream import (Aside, Delivery, More, PartitionReader, ReportPublisher,
                                               report_message_id)
from iotdefender.cluster.topology import Topology, TopologyMismatch, count_servers, ensure, replicas_for
from tests.support.jetstream import JetStreamCluster, SingleJetStream, make_leader
from tests.support import plain_http


@pytest.fixture
def single(jetstream):  # type: ignore[no-untyped-def]
    return jetstream


@pytest.fixture(scope="module")
def cluster():
    servers = JetStreamCluster()
    servers.start()
    yield servers
    servers.stop()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _connect(urls: list[str]):  # type: ignore[no-untyped-def]
    nc = await nats.connect(servers=urls)
    return nc, nc.jetstream()


def test_topology_is_r1_on_one_server_idempotent_and_refuses_another_partition_count(single):
    async def go() -> None:
        nc, js = await _connect(single.urls)
        assert count_servers(nc) == 1
        topology = Topology(replicas=replicas_for(count_servers(nc)), partitions=8)
        await ensure(js, topology)
        await ensure(js, topology)  # a second node starting: no error, nothing changed
        info = await js.stream_info(topology.stream)
        assert info.config.num_replicas == 1 and info.config.metadata["iotdefender.partitions"] == "8"
        assert len(await js.consumers_info(topology.stream)) == 8
        with pytest.raises(TopologyMismatch, match="8 partitions, this node is configured for 16"):
            await ensure(js, Topology(replicas=1, partitions=16))
        with pytest.raises(TopologyMismatch, match="lease"):
            await ensure(js, Topology(replicas=1, partitions=8, lease_ttl_s=9))
        await nc.close()
    run(go())


def test_topology_is_r3_on_three_servers_and_refuses_r1(cluster):
    async def go() -> None:
        nc, js = await _connect(cluster.urls)
        assert count_servers(nc) == 3
        topology = Topology(replicas=replicas_for(count_servers(nc)), partitions=4, stream="R3TEST",
                            subject_prefix="r3test", members_bucket="r3-members", leases_bucket="r3-leases")
        await ensure(js, topology)
        assert (await js.stream_info("R3TEST")).config.num_replicas == 3
        assert (await js.stream_info("KV_r3-leases")).config.num_replicas == 3
        assert (await js.consumer_info("R3TEST", topology.consumer_of(0))).config.num_replicas == 3
        with pytest.raises(TopologyMismatch, match="R3, this node expects R1"):
            await ensure(js, Topology(replicas=1, partitions=4, stream="R3TEST", subject_prefix="r3test",
                                      members_bucket="r3-members", leases_bucket="r3-leases"))
        await nc.close()
    run(go())


def test_a_retried_publish_is_stored_once(single):
    async def go() -> None:
        nc, js = await _connect(single.urls)
        topology = Topology(partitions=4)
        await ensure(js, topology)
        publisher = ReportPublisher(js, topology)
        first = await publisher.publish("dev-1", b"{}", report_message_id("dev-1", 7))
        again = await publisher.publish("dev-1", b"{}", report_message_id("dev-1", 7))
        other = await publisher.publish("dev-1", b"{}", report_message_id("dev-1", 8))
        assert not first.duplicate and again.duplicate and again.seq == first.seq and other.seq == first.seq + 1
        assert (await js.stream_info(topology.stream)).state.messages == 2
        await nc.close()
    run(go())


def test_reader_hands_batches_in_order_acks_after_the_handler_and_retries_a_failed_batch(single):
    async def go() -> None:
        nc, js = await _connect(single.urls)
        topology = Topology(partitions=2)
        await ensure(js, topology)
        publisher = ReportPublisher(js, topology)
        things = [f"t{i}" for i in range(20)]
        partition = partition_of(things[0], 2)
        mine = [t for t in things if partition_of(t, 2) == partition]
        for report_id in range(30):
            for thing in mine:
                await publisher.publish(thing, str(report_id).encode(), report_message_id(thing, report_id))
        seen: list[Delivery] = []
        calls = 0

        async def handler(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            nonlocal calls
            calls += 1
            info = await js.consumer_info(topology.stream, topology.consumer_of(p))
            assert info.num_ack_pending >= len(batch)  # nothing acked before the handler returns
            if calls == 2:
                raise RuntimeError("the transaction failed")
            seen.extend(batch)

        reader = PartitionReader(js, topology, partition, handler, token=1, still_owner=lambda: True, batch=7,
                                 retry_pause_s=0.05)
        await reader.start()
        total = 30 * len(mine)
        while reader.handled < total:
            await asyncio.sleep(0.05)
        await reader.stop()
        sequences = [d.stream_sequence for d in seen]
        assert sequences == sorted(sequences) and len(set(sequences)) == total  # in order, none twice
        for thing in mine:
            assert [int(d.payload) for d in seen if d.thing_name == thing] == list(range(30))
        # The failed batch was handed over again before anything after it (the order above, every
        # report once): the reader keeps a batch whose handler failed and retries it.
        await _stream_empties(js, topology.stream)  # acked reports leave the queue
        await nc.close()
    run(go())


def test_a_reader_is_read_through_a_time_only_once_it_handled_everything_stored_before_it(single):
    """``read_through``: what a detect node waiting for a publisher's end of a cloud window asks
    (cloud/cluster_windows.py): not while a backlog stored before that time is unhandled."""
    async def go() -> None:
        nc, js = await _connect(single.urls)
        topology = Topology(partitions=1)
        await ensure(js, topology)
        publisher = ReportPublisher(js, topology)
        for report_id in range(40):
            await publisher.publish("t", str(report_id).encode(), report_message_id("t", report_id))
        stored = time.time()
        slow = asyncio.Event()
        handled: list[int] = []

        async def handler(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            await slow.wait()  # a backlog: the first batches wait
            handled.extend(int(d.payload) for d in batch)

        reader = PartitionReader(js, topology, 0, handler, token=1, still_owner=lambda: True, batch=10)
        await reader.start()
        await asyncio.sleep(0.5)
        assert reader.read_through < stored  # 40 stored before, none handled yet
        slow.set()
        while len(handled) < 40:
            await asyncio.sleep(0.05)
        while reader.read_through < stored:  # the next fetch finds nothing more: read through
            await asyncio.sleep(0.05)
        assert len(handled) == 40
        await reader.stop()
        await nc.close()
    run(go())


def test_a_delivery_lost_while_the_reader_paused_comes_back_at_once_not_after_ack_wait(single):
    """A report delivered but never acked by anyone (in flight when a NATS server died, here taken
    by another binding of the consumer that drops it) while the reader's lease was in doubt: when
    the lease is valid again the reader finds it unacknowledged and resets the consumer, so it is
    handled within seconds, not after the 30 s ``ack_wait``; the reader is never restarted."""
    async def go() -> None:
        nc, js = await _connect(single.urls)
        topology = Topology(partitions=2)
        await ensure(js, topology)
        thing = "lost-1"
        partition = partition_of(thing, 2)
        valid = False
        handled: list[Delivery] = []

        async def handler(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            handled.extend(batch)

        reader = PartitionReader(js, topology, partition, handler, token=1, still_owner=lambda: valid,
                                 retry_pause_s=0.05)
        await reader.start()  # paused: its lease is in doubt
        await ReportPublisher(js, topology).publish(thing, b"7", report_message_id(thing, 7))
        thief = await js.pull_subscribe_bind(durable=topology.consumer_of(partition), stream=topology.stream)
        [lost] = await thief.fetch(1, timeout=5)  # delivered, never acked
        assert (await js.consumer_info(topology.stream, topology.consumer_of(partition))).num_ack_pending == 1
        valid = True  # the lease is confirmed
        resumed = asyncio.get_running_loop().time()
        while not handled:
            assert asyncio.get_running_loop().time() - resumed < 10, "not handled within 10 s"
            await asyncio.sleep(0.05)
        assert [(d.thing_name, d.payload) for d in handled] == [(thing, b"7")] and reader.reading
        await reader.stop()
        await nc.close()
    run(go())


def _thing_in(partition: int, partitions: int, prefix: str) -> str:
    return next(f"{prefix}-{i}" for i in range(1000) if partition_of(f"{prefix}-{i}", partitions) == partition)


async def _two_partitions(urls: list[str]):  # type: ignore[no-untyped-def]
    """A connection, a stream of two partitions and a publisher to it."""
    nc, js = await _connect(urls)
    topology = Topology(partitions=2)
    await ensure(js, topology)
    return nc, js, topology, ReportPublisher(js, topology)


def test_a_failed_batch_comes_back_before_the_reports_the_reader_already_held_after_it(single):
    """The reader's pull request stays open (cluster/pull.py), so reports published while a batch is
    handled are already in the reader's hands when the batch fails: they must not be handled before
    the batch (nakking it did that, which broke per-thing order and, with it, storage)."""
    async def go() -> None:
        nc, js, topology, publisher = await _two_partitions(single.urls)
        thing = _thing_in(1, 2, "held")
        handled: list[int] = []
        failed = False

        async def handler(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            nonlocal failed
            if not failed:
                failed = True
                for report_id in (1, 2, 3):  # delivered to the reader while this batch is in hand
                    await publisher.publish(thing, str(report_id).encode(), report_message_id(thing, report_id))
                await asyncio.sleep(0.3)
                raise RuntimeError("the transaction failed")
            handled.extend(int(d.payload) for d in batch)

        reader = PartitionReader(js, topology, 1, handler, token=1, still_owner=lambda: True, retry_pause_s=0.05)
        await reader.start()
        await publisher.publish(thing, b"0", report_message_id(thing, 0))
        for _ in range(100):
            if len(handled) >= 4:
                break
            await asyncio.sleep(0.05)
        await reader.stop()
        assert handled == [0, 1, 2, 3]
        await nc.close()
    run(go())


def test_reports_delivered_while_a_batch_waits_join_it_in_order_within_the_batch_size(single):
    """``more`` (what the writer calls as its transaction starts) adds what was delivered after the
    batch in hand: in stream order, no more than the batch size, up to the first delivery refused;
    acked with the batch after the handler returns, and kept with it when the handler fails. The
    rest comes in the next batch, in order. A reader whose pull request was used up opens another
    as it hands a batch over, so that reports arriving meanwhile are delivered and can join it."""
    async def go() -> None:
        nc, js, topology, publisher = await _two_partitions(single.urls)
        thing = _thing_in(1, 2, "more")
        batches: list[list[int]] = []  # each handler call's batch as handed over
        added: list[list[int]] = []  # what each call of ``more`` added to it

        async def publish(*report_ids: int) -> None:
            for report_id in report_ids:
                await publisher.publish(thing, str(report_id).encode(), report_message_id(thing, report_id))
            await asyncio.sleep(0.3)  # delivered to the reader's open pull request meanwhile

        def more_of(more: More, accept: Callable[[Delivery], bool] = lambda d: True) -> None:
            added.append([int(d.payload) for d in more(accept)])

        async def handler(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            call = len(batches)
            batches.append([int(d.payload) for d in batch])
            if call == 0:
                await publish(*range(1, 9))
                more_of(more)
                more_of(more)  # the batch is full (6)
                info = await js.consumer_info(topology.stream, topology.consumer_of(p))
                assert info.num_ack_pending == 6  # nothing acked before the handler returns
            elif call == 1:
                await publish(9, 10, 11, 12)
                more_of(more, lambda d: d.payload != b"11")
            elif call == 2:  # its request was used up (6 delivered): another is open, 12 arrives
                await publish(13)
                more_of(more)
                raise RuntimeError("the transaction failed")

        reader = PartitionReader(js, topology, 1, handler, token=1, still_owner=lambda: True, batch=6,
                                 retry_pause_s=0.05)
        await reader.start()
        await publisher.publish(thing, b"0", report_message_id(thing, 0))
        for _ in range(200):
            if reader.handled >= 14:
                break
            await asyncio.sleep(0.05)
        await reader.stop()
        assert added[:2] == [[1, 2, 3, 4, 5], []]
        # Each batch starts where the additions to the one before ended. The second is what its
        # pull request brought before the reader took it: 6, or 6 to 8 when they came in one read
        # (a fetch returns with the first delivery; a full CI run saw [6]); ``more`` adds the rest
        # of what came, up to 11, refused.
        assert batches[1][:1] == [6] and batches[1] + added[2] == [6, 7, 8, 9, 10]
        assert added[3] == [12, 13]
        # The failed batch is handed over again with what was added to it, before anything after it.
        assert batches[:1] + batches[2:] == [[0], [11], [11, 12, 13]]
        assert reader.handled == 14
        await _stream_empties(js, topology.stream)  # every one acked
        await nc.close()
    run(go())


def test_a_delivery_taken_by_another_pull_request_is_handled_before_the_next_one(single):
    """While the reader handles a batch, another binding of the partition's consumer (the previous
    owner's last pull request; or a delivery lost with a NATS server) takes the next report and
    never acks it. The reader's next delivery skips a number in the consumer's delivery sequence:
    it resets the consumer instead of handling it, so the missing report is handled first, within
    seconds (not after the 30 s ``ack_wait``, after the reports that followed it)."""
    async def go() -> None:
        nc, js, topology, publisher = await _two_partitions(single.urls)
        thing = _thing_in(0, 2, "gap")
        handled: list[int] = []
        in_hand, go_on = asyncio.Event(), asyncio.Event()

        async def handler(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            handled.extend(int(d.payload) for d in batch)
            in_hand.set()
            await go_on.wait()

        reader = PartitionReader(js, topology, 0, handler, token=1, still_owner=lambda: True, batch=1,
                                 retry_pause_s=0.05)
        await reader.start()
        await publisher.publish(thing, b"0", report_message_id(thing, 0))
        await asyncio.wait_for(in_hand.wait(), 10)
        thief = await js.pull_subscribe_bind(durable=topology.consumer_of(0), stream=topology.stream)
        taking = asyncio.create_task(thief.fetch(1, timeout=5))
        await asyncio.sleep(0.3)  # its pull request waits at the server; the reader's was used up
        await publisher.publish(thing, b"1", report_message_id(thing, 1))
        [taken] = await taking  # delivered to the other binding, never acked
        assert taken.data == b"1"
        go_on.set()
        await publisher.publish(thing, b"2", report_message_id(thing, 2))
        started = asyncio.get_running_loop().time()
        while len(handled) < 3 and asyncio.get_running_loop().time() - started < 8:
            await asyncio.sleep(0.05)
        await reader.stop()
        assert handled == [0, 1, 2]
        await nc.close()
    run(go())


def _part(payload: bytes) -> bool:
    return payload.startswith(b"part")


async def _stream_empties(js: Any, stream: str, within_s: float = 10.0) -> None:
    """Every delivery acked and gone from the work queue. An ack is sent once its handler returned
    and the server applies it a moment later: asserted at once, the handler's last effect seen,
    the queue could still hold it (1 message left, a CI run at load)."""
    started = asyncio.get_running_loop().time()
    while (await js.stream_info(stream)).state.messages:
        assert asyncio.get_running_loop().time() - started < within_s, "the stream still holds messages"
        await asyncio.sleep(0.05)


async def _until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    started = asyncio.get_running_loop().time()
    while not condition():
        assert asyncio.get_running_loop().time() - started < within_s, "not within the time"
        await asyncio.sleep(0.05)


def test_reports_behind_deliveries_set_aside_are_handled_and_acked_while_those_wait(single):
    """``Aside``: what it takes (a cloud window's parts, kept in PostgreSQL before they are acked)
    is settled beside the batches. The reports behind it are handled and acked at once instead of
    waiting for it; it stays unacked until its handler returns, ``read_through`` does not pass it
    meanwhile, and set-aside deliveries are handed over in order, one call at a time."""
    async def go() -> None:
        nc, js, topology, publisher = await _two_partitions(single.urls)
        thing = _thing_in(1, 2, "aside")
        reports: list[int] = []
        set_aside: list[list[bytes]] = []
        calls_running = 0
        most_running = 0
        release = asyncio.Event()

        async def handle_reports(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            assert not any(_part(d.payload) for d in batch)
            reports.extend(int(d.payload) for d in batch)
            assert not any(_part(d.payload) for d in more(lambda d: True))  # nothing set aside joins

        async def handle_parts(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            nonlocal calls_running, most_running
            calls_running += 1
            most_running = max(most_running, calls_running)
            set_aside.append([d.payload for d in batch])
            await release.wait()
            calls_running -= 1

        async def publish(payload: bytes, key: str) -> None:
            await publisher.publish(thing, payload, report_message_id(thing, hash(key) & 0xffff))

        reader = PartitionReader(js, topology, 1, handle_reports, token=1, still_owner=lambda: True, batch=4,
                                 retry_pause_s=0.05, aside=Aside(lambda d: _part(d.payload), handle_parts))
        await reader.start()
        await publish(b"0", "r0")
        await publish(b"part-a", "pa")
        for report_id in (1, 2, 3):
            await publish(str(report_id).encode(), f"r{report_id}")
        await _until(lambda: len(reports) == 4)
        await publish(b"part-b", "pb")
        await publish(b"4", "r4")
        await _until(lambda: len(reports) == 5)
        stored = time.time()
        await asyncio.sleep(1.2)  # fetches that find nothing more: read through, but for the parts
        assert reports == [0, 1, 2, 3, 4]
        assert set_aside == [[b"part-a"]]  # part-b waits for the call before it to return
        info = await js.consumer_info(topology.stream, topology.consumer_of(1))
        assert info.num_ack_pending == 2  # the reports are acked; both parts are not
        assert (await js.stream_info(topology.stream)).state.messages == 2
        assert reader.read_through < stored
        release.set()
        await _until(lambda: reader.read_through >= stored)
        assert set_aside == [[b"part-a"], [b"part-b"]] and most_running == 1
        await _stream_empties(js, topology.stream)
        assert reader.handled == 7
        await reader.stop()
        await nc.close()
    run(go())


def test_deliveries_set_aside_that_fail_are_retried_in_order_and_handed_back_when_the_reader_stops(single):
    """A keep that fails (the database is away) is retried, and what was set aside after it waits
    for it; a reader asked to stop meanwhile hands it back (nakked, for the next owner) instead
    of leaving it unacked until ``ack_wait``."""
    async def go() -> None:
        nc, js, topology, publisher = await _two_partitions(single.urls)
        thing = _thing_in(0, 2, "retry")
        handled: list[bytes] = []
        failures = 2
        tried = asyncio.Event()

        async def handle_reports(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            handled.extend(d.payload for d in batch)

        async def handle_parts(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            nonlocal failures
            tried.set()
            if failures:
                failures -= 1
                raise RuntimeError("the database is away")
            handled.extend(d.payload for d in batch)

        reader = PartitionReader(js, topology, 0, handle_reports, token=1, still_owner=lambda: True, batch=1,
                                 retry_pause_s=0.3, aside=Aside(lambda d: _part(d.payload), handle_parts))
        await reader.start()
        for n, payload in enumerate((b"part-1", b"part-2", b"r")):
            await publisher.publish(thing, payload, report_message_id(thing, n))
        await _until(lambda: b"r" in handled)
        assert handled == [b"r"]  # both parts wait for the first one's retries
        await _until(lambda: len(handled) == 3)
        assert handled == [b"r", b"part-1", b"part-2"]
        await _stream_empties(js, topology.stream)

        failures, tried = 1_000, asyncio.Event()
        await publisher.publish(thing, b"part-3", report_message_id(thing, 3))
        await asyncio.wait_for(tried.wait(), 10)
        await asyncio.wait_for(reader.stop(), 5)
        assert (await js.stream_info(topology.stream)).state.messages == 1
        assert handled == [b"r", b"part-1", b"part-2"]
        failures = 0
        successor = PartitionReader(js, topology, 0, handle_reports, token=2, still_owner=lambda: True,
                                    aside=Aside(lambda d: _part(d.payload), handle_parts))
        await successor.start()
        await _until(lambda: len(handled) == 4, within_s=8)  # handed back: not after the 30 s ack_wait
        assert handled[-1] == b"part-3"
        await successor.stop()
        await nc.close()
    run(go())


def test_deliveries_handed_back_while_the_lease_was_in_doubt_are_kept_once_it_is_confirmed(single):
    """A keep fails (the database blinked) and, at its retry, the lease is in doubt: the part is
    handed back (nakked), and so is every one set aside after it. Once the lease is confirmed the
    consumer is reset and they are kept, each delivered a few times, not nakked again for good
    (they were, in a loop, until the reader was replaced). ``read_through`` never passes a part
    that was handed back and not kept since."""
    async def go() -> None:
        nc, js, topology, publisher = await _two_partitions(single.urls)
        thing = _thing_in(0, 2, "doubt")
        owner, failing = True, True
        kept: list[bytes] = []
        attempts = 0
        passed_unkept: list[float] = []

        async def handle_reports(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            return None

        async def handle_parts(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            nonlocal attempts
            attempts += 1
            if failing:
                raise RuntimeError("the database is away")
            kept.extend(d.payload for d in batch)

        reader = PartitionReader(js, topology, 0, handle_reports, token=1, still_owner=lambda: owner, batch=8,
                                 retry_pause_s=0.2, aside=Aside(lambda d: _part(d.payload), handle_parts))
        await reader.start()
        published = time.time()
        await publisher.publish(thing, b"part-1", report_message_id(thing, 1))
        await _until(lambda: attempts > 0)
        owner = False  # in doubt at the retry: handed back
        for _ in range(10):
            await asyncio.sleep(0.05)
            if reader.read_through >= published and b"part-1" not in kept:
                passed_unkept.append(reader.read_through)
        await publisher.publish(thing, b"part-2", report_message_id(thing, 2))
        owner, failing = True, False  # confirmed; the database is back
        for _ in range(100):
            if reader.read_through >= published and b"part-1" not in kept:
                passed_unkept.append(reader.read_through)
            if kept == [b"part-1", b"part-2"] and (await js.stream_info(topology.stream)).state.messages == 0:
                break
            await asyncio.sleep(0.05)
        assert kept == [b"part-1", b"part-2"]
        await _stream_empties(js, topology.stream)
        delivered = (await js.consumer_info(topology.stream, topology.consumer_of(0))).delivered.consumer_seq
        assert delivered < 20, delivered  # a few redeliveries, not a loop
        assert not passed_unkept
        await _until(lambda: reader.read_through >= published)
        await reader.stop()
        await nc.close()
    run(go())


def test_a_new_owner_gets_the_deliveries_its_predecessor_had_set_aside_first(single):
    """A node killed while it keeps a window's parts: the reports behind them were acked (gone from
    the work queue), the parts were not. The next owner's reader resets the consumer and gets the
    parts at once, not after ``ack_wait``, and no report again."""
    async def go() -> None:
        nc, js, topology, publisher = await _two_partitions(single.urls)
        thing = _thing_in(1, 2, "killed")
        first: list[bytes] = []
        never = asyncio.Event()

        async def first_reports(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            first.extend(d.payload for d in batch)

        async def stuck_parts(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            await never.wait()

        killed = await nats.connect(servers=single.urls)
        old = PartitionReader(killed.jetstream(), topology, 1, first_reports, token=1, still_owner=lambda: True,
                              aside=Aside(lambda d: _part(d.payload), stuck_parts))
        await old.start()
        for n, payload in enumerate((b"part-1", b"r1", b"r2")):
            await publisher.publish(thing, payload, report_message_id(thing, n))
        await _until(lambda: first == [b"r1", b"r2"])
        await asyncio.sleep(0.3)  # their acks reach the server
        assert (await js.stream_info(topology.stream)).state.messages == 1  # the part, unacked
        assert old._task is not None
        old._task.cancel()  # the node dies: nothing of it runs again
        await killed.close()

        second: list[bytes] = []

        async def second_handler(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            second.extend(d.payload for d in batch)

        new = PartitionReader(js, topology, 1, second_handler, token=2, still_owner=lambda: True,
                              aside=Aside(lambda d: _part(d.payload), second_handler))
        await new.start()
        await _until(lambda: second == [b"part-1"], within_s=8)  # ack_wait is 30 s
        await asyncio.sleep(0.5)
        assert second == [b"part-1"]
        await _stream_empties(js, topology.stream)
        await new.stop()
        await nc.close()
    run(go())


def test_losing_one_server_of_three_loses_no_stored_report_and_retries_are_stored_once():
    servers = JetStreamCluster()
    servers.start()
    try:
        async def go() -> None:
            # Connected to the server that will be killed: the client must reconnect to another one.
            nc = await nats.connect(servers=servers.urls, dont_randomize=True, reconnect_time_wait=0.2)
            js = nc.jetstream()
            topology = Topology(replicas=3, partitions=4)
            await ensure(js, topology)
            publisher = ReportPublisher(js, topology, timeout_s=1.0)
            retries = 0

            async def publish_all(report_ids: range) -> None:
                nonlocal retries
                for report_id in report_ids:
                    for thing in ("a", "b", "c", "d"):
                        while True:  # what a broker node does before answering the device
                            try:
                                await publisher.publish(thing, b"{}", report_message_id(thing, report_id))
                                break
                            except (nats.errors.Error, asyncio.TimeoutError):
                                retries += 1
                                await asyncio.sleep(0.2)

            await publish_all(range(50))
            servers.servers[0].process.kill()  # kill -9 one server of three (maybe a leader)
            await publish_all(range(50, 100))
            info = await js.stream_info(topology.stream)
            print(f"one NATS server killed: {retries} publish retries, {info.state.messages} reports stored")
            assert info.state.messages == 400 and info.config.num_replicas == 3
            seen: set[int] = set()

            async def store(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
                seen.update(d.stream_sequence for d in batch)

            readers = [PartitionReader(js, topology, p, store, token=1, still_owner=lambda: True) for p in range(4)]
            for reader in readers:
                while True:  # a consumer whose leader was on the dead server needs an election first
                    try:
                        await reader.start()
                        break
                    except (nats.errors.Error, asyncio.TimeoutError):
                        await asyncio.sleep(0.2)
            while len(seen) < 400:
                await asyncio.sleep(0.05)
            for reader in readers:
                await reader.stop()
            assert sum(r.handled for r in readers) == 400
            await nc.close()
        run(go())
    finally:
        servers.stop()


def test_a_lost_renewal_reply_keeps_the_lease_and_a_foreign_write_loses_it(single):
    """A renewal stored by the server whose reply never arrived must not cost the partition (no one
    else writes this node's id); a write by anyone else means the lease was taken."""
    async def go() -> None:
        nc, js = await _connect(single.urls)
        topology = Topology(partitions=2, lease_ttl_s=2.0)
        await ensure(js, topology)
        acquired: dict[int, int] = {}

        async def on_acquired(p: int, token: int) -> None:
            acquired[p] = token

        async def on_released(p: int) -> None:
            acquired.pop(p, None)

        ownership = Ownership(js, topology, "me", on_acquired, on_released)
        await ownership.start()
        assert set(ownership.owned()) == {0, 1}
        kv = await js.key_value(topology.leases_bucket)
        own = await kv.get(lease_key(0))
        await kv.update(lease_key(0), b"me", last=own.revision)  # "our" renewal, reply lost
        other = await kv.get(lease_key(1))
        await kv.update(lease_key(1), b"someone-else", last=other.revision)  # taken by another node
        for _ in range(200):  # two keepalive rounds when the machine is quiet; a renewal unanswered
            if 1 not in ownership.kept():  # within a tick is retried (in doubt) on a loaded one
                break
            await asyncio.sleep(0.05)
        assert ownership.holds(0, acquired[0])
        assert 1 not in ownership.kept()  # lost: not merely in doubt
        await ownership.stop()
        await nc.close()
    run(go())


def test_leases_outlive_a_nats_outage_longer_than_the_ttl_and_are_kept_only_if_their_fence_moves():
    """NATS down for longer than the lease (kill -9, then started again on its store): the leases
    stay in doubt — nothing released — and expire on the server meanwhile. When it answers, the node
    creates each again and asks to move its fence: where the fence moved the partition goes on
    under the new token; where it did not (another owner claimed it meanwhile) it is released (its
    new key deleted) and, being still this node's share, acquired afresh (claim, reload)."""
    server = SingleJetStream()
    server.start()

    async def go() -> None:
        nc = await nats.connect(servers=server.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream()
        topology = Topology(partitions=2, lease_ttl_s=2.0)
        await ensure(js, topology)
        released: list[int] = []
        moves: list[tuple[int, int, int]] = []
        taken: list[tuple[int, int]] = []

        async def acquired(p: int, token: int) -> None:
            taken.append((p, token))

        async def on_released(p: int) -> None:
            released.append(p)

        async def retoken(p: int, old: int, new: int) -> bool:
            moves.append((p, old, new))
            return p == 0  # partition 1's fence was claimed by another owner meanwhile

        ownership = Ownership(js, topology, "me", acquired, on_released, retoken=retoken)
        await ownership.start()
        before = ownership.owned()
        assert set(before) == {0, 1}
        taken.clear()
        server.server.kill9()
        await asyncio.sleep(topology.lease_ttl_s * 1.5)
        assert ownership.in_doubt() == [0, 1] and ownership.kept() == before and released == []
        assert ownership.owned() == {}  # not valid: their readers read nothing meanwhile
        server.server.start()  # the same port and store: the entries are older than the TTL now
        for _ in range(200):
            if taken:
                break
            await asyncio.sleep(0.05)
        # Both leases are renewed concurrently: their fences move in either order.
        moved = {p: (old, new) for p, old, new in moves}
        assert sorted((p, old) for p, old, _ in moves) == [(0, before[0]), (1, before[1])]
        assert released == [1] and [p for p, _ in taken] == [1]  # 0 went on; 1 was given up, then taken anew
        assert moved[0][1] > before[0] and taken[0][1] > moved[1][1]  # its key deleted, then created again
        assert ownership.owned() == {0: moved[0][1], 1: taken[0][1]}
        await ownership.stop()
        await nc.close()
    try:
        run(go())
    finally:
        server.stop()


def test_two_nodes_racing_to_create_different_topologies_one_is_refused(single):
    async def go() -> None:
        nc, js = await _connect(single.urls)
        outcomes = await asyncio.gather(ensure(js, Topology(partitions=8)), ensure(js, Topology(partitions=16)),
                                        return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, TopologyMismatch)]
        assert len(refused) == 1 and outcomes.count(None) == 1, outcomes
        await nc.close()
    run(go())


def test_server_count_comes_from_the_cluster_when_the_node_is_given_one_url(cluster):
    async def go() -> None:
        for url in cluster.urls:
            nc = await nats.connect(servers=[url])
            deadline = asyncio.get_running_loop().time() + 5
            while count_servers(nc) < 3:  # routes gossip every member's URL within moments
                assert asyncio.get_running_loop().time() < deadline, nc._server_info.get("connect_urls")
                await asyncio.sleep(0.1)
            await nc.close()
    run(go())


def test_a_reader_sends_one_pull_request_per_expiry_not_one_or_two_per_batch(single):
    """Reports arriving one by one (as at 500 reports/s over 64 partitions): the reader keeps one
    pull request open and takes what it delivered, in order. nats-py's fetch sent a ``no_wait``
    probe and then a lingering request after nearly every batch: 1.7 pull requests per report in
    bench/cluster.py (nats-server's ``/varz``); here at most one per ``fetch_wait_s``, counted the
    same way: messages into the server less the reports' publishes and acks."""
    async def go() -> None:
        nc, js = await _connect(single.urls)
        topology = Topology(replicas=1, partitions=4)
        await ensure(js, topology)
        publisher = ReportPublisher(js, topology)
        thing = next(f"t-{i}" for i in range(100) if partition_of(f"t-{i}", 4) == 2)
        seen: list[int] = []

        async def handler(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
            seen.extend(int(d.payload) for d in batch)

        def received() -> int:
            return int(plain_http.get(f"http://127.0.0.1:{single.server.http_port}/varz", timeout=5).json()["in_msgs"])

        reader = PartitionReader(js, topology, 2, handler, token=1, still_owner=lambda: True, fetch_wait_s=0.5)
        await reader.start()
        await asyncio.sleep(0.3)
        before, started = received(), asyncio.get_running_loop().time()
        reports = 60
        for report_id in range(reports):
            await publisher.publish(thing, str(report_id).encode(), report_message_id(thing, report_id))
            await asyncio.sleep(0.02)
        while len(seen) < reports:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # the last ack in
        elapsed = asyncio.get_running_loop().time() - started
        requests = received() - before - 2 * reports  # every report: its publish and its ack
        await reader.stop()
        assert seen == list(range(reports))
        assert requests <= elapsed / 0.5 + 2, f"{requests} pull requests for {reports} reports in {elapsed:.1f} s"
        await nc.close()
    run(go())


#: Consumers led by the server that is killed: each elects its new leader at its own moment (4-9 s).
STALL_PARTITIONS = 8
#: A reader must hand over a report at most this long after its consumer's new leader was elected.
#: Its consumer check asks every ~1.2 s (1 s timeout + 0.2 s pause), so ~1.3 s is the most it
#: should take; the rest is room for a loaded machine. With nats-py's 5 s default a check sent
#: just before the election was never answered and the reader resumed up to ~5 s after it.
RESUME_BOUND_S = 3.0


def test_a_reader_resumes_about_a_second_after_its_consumer_elects_a_leader_not_a_request_timeout_later():
    servers = JetStreamCluster()
    servers.start()
    victim, keeper = servers.servers[0], servers.servers[1]
    try:
        async def go() -> None:
            # The reader's connection is not on the victim, and the stream is not led by it: publishing
            # goes on; only the consumers (all led by the victim) must elect.
            nc, js = await _connect([s.url for s in servers.servers[1:]])
            topology = Topology(replicas=3, partitions=STALL_PARTITIONS, stream="STALL", subject_prefix="stall",
                                members_bucket="stall-members", leases_bucket="stall-leases")
            await ensure(js, topology)
            await make_leader(js, topology.stream, keeper.name)
            for p in range(STALL_PARTITIONS):
                await make_leader(js, topology.stream, victim.name, consumer=topology.consumer_of(p))
            handled: dict[int, float] = {}

            async def handler(p: int, token: int, batch: Sequence[Delivery], more: More) -> None:
                handled.setdefault(p, time.time())

            readers = [PartitionReader(js, topology, p, handler, token=1, still_owner=lambda: True)
                       for p in range(STALL_PARTITIONS)]
            for reader in readers:
                await reader.start()
            things = {partition_of(f"thing-{n}", STALL_PARTITIONS): f"thing-{n}" for n in range(200)}
            assert sorted(things) == list(range(STALL_PARTITIONS))
            victim.kill9()
            killed = time.time()
            publisher = ReportPublisher(js, topology, timeout_s=1.0)
            for thing in things.values():
                await publisher.publish(thing, b"{}", report_message_id(thing, 1))
            while len(handled) < STALL_PARTITIONS and time.time() < killed + 40:
                await asyncio.sleep(0.05)
            for reader in readers:
                await reader.stop()
            await nc.close()
            elected: dict[str, float] = {}
            for when, kind, name in sorted(e for s in servers.servers[1:] for e in s.leader_elections()):
                if kind == "consumer" and when > killed:
                    elected.setdefault(name, when)  # the first election after the kill
            lags = {p: round(handled[p] - elected[f"STALL > {topology.consumer_of(p)}"], 2) for p in handled}
            print(f"consumers elected {sorted(round(t - killed, 2) for t in elected.values())} s after the kill; "
                  f"each reader handed its report over {sorted(lags.values())} s after its consumer's election")
            assert len(handled) == STALL_PARTITIONS, f"partitions never read again: {set(range(8)) - set(handled)}"
            assert max(lags.values()) < RESUME_BOUND_S, lags
        run(go())
    finally:
        servers.stop()
