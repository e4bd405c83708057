"""The cloud window between nodes: told apart from a report without decoding it, round-tripped
with its None topic keys, and merged from several broker nodes' parts."""

from __future__ import annotations

import asyncio

from iotdefender.cloud.aggregator import Aggregator, ClientWindow, merge_windows
from iotdefender.cloud.cluster_windows import (PARTS_MAX_BYTES, PARTS_PER_MESSAGE, CloudWindowEnd, CloudWindowMessage,
                                               CloudWindowParts, DevicePart, PeersRead, WindowPublisher, batched,
                                               announcement, decode, encode, ends_readable, parts_limit)
from iotdefender.cluster.partitions import partition_of
from iotdefender.cloud.service import CloudEventIntake
from iotdefender.pipeline.report_message import ReportMessage, encode as encode_report


def test_a_report_is_not_a_cloud_window_even_for_a_thing_named_like_one():
    assert decode(encode_report(ReportMessage("cloud-window", {}, 1.0, 1, "json", "r"))) is None
    part = ClientWindow(connection_attempts=2, auth_failures={None: 1, "a/b": 2}, sent={None: 3},
                        sent_max_bytes={None: 5}, source_ips={"10.0.0.1": None}, last_disconnect=3.5)
    message = CloudWindowMessage("t", 3, 2.0, "node-a", part)
    assert decode(encode(message)) == message
    assert decode(encode(message)[:-3]) is None  # truncated: logged, not a report either


def test_an_end_of_window_is_told_apart_from_a_part_and_a_report():
    end = CloudWindowEnd("node-a", 1, 3, 5, 2.0, last=True)
    assert decode(encode(end)) == end
    assert decode(encode_report(ReportMessage("cloud-window-end", {}, 1.0, 1, "json", "r"))) is None


def test_ends_are_sent_only_when_every_live_node_announces_it_reads_them():
    assert ends_readable([]) and ends_readable([1, 1])
    assert not ends_readable([1, None])  # a node of the release before: it would read an end as a report


def test_parts_merge_into_one_window_and_the_later_of_connect_and_disconnect_wins():
    on_a = ClientWindow(connection_attempts=1, disconnects=1, sent={"t": 4}, sent_max_bytes={"t": 10},
                        source_ips={"10.0.0.1": None}, last_connect_ok=100.0, last_disconnect=110.0)
    on_b = ClientWindow(connection_attempts=1, sent={"t": 3, None: 1}, sent_max_bytes={"t": 20, None: 2},
                        auth_failures={None: 1}, source_ips={"10.0.0.2": None}, last_connect_ok=120.0)
    merged = merge_windows([on_a, on_b])
    assert (merged.connection_attempts, merged.disconnects, merged.sent, merged.sent_max_bytes, merged.auth_failures) \
        == (2, 1, {"t": 7, None: 1}, {"t": 20, None: 2}, {None: 1})
    assert list(merged.source_ips) == ["10.0.0.1", "10.0.0.2"]
    aggregator = Aggregator(300.0)
    aggregator.add_window(0, "dev", merged)
    assert aggregator.datapoints("dev", aggregator.take(0)["dev"], 300.0)["aws:disconnect-duration"] == {"count": 0}
    aggregator.add_window(1, "dev", merge_windows([on_a]))  # it left and did not come back
    assert aggregator.datapoints("dev", aggregator.take(1)["dev"], 290.0)["aws:disconnect-duration"] == {"count": 3}


def test_a_broker_node_publishes_one_part_per_device_seen_and_none_for_a_client_id_no_thing_can_have():
    now = [1000.0]
    sent: list[tuple[str, str]] = []

    async def publish(thing: str, payload: bytes, message_id: str) -> None:
        sent.append((thing, message_id))

    intake = CloudEventIntake(300.0, lambda: now[0])
    publisher = WindowPublisher(intake, publish, "node-a", clock=lambda: now[0])
    intake.message_sent("dev-1", "t", 3)
    intake.message_sent("bad\nid", "t", 3)
    intake.connect_attempt("dev-2", "10.0.0.1", True)
    now[0] = 1200.0 + 0.2  # the window [900, 1200) ended
    assert asyncio.run(publisher.publish_due()) == 2
    assert sorted(sent) == [("dev-1", "cloud/node-a/dev-1/3"), ("dev-2", "cloud/node-a/dev-2/3")]


def test_a_partitions_parts_go_in_batches_split_by_count_and_by_size_and_decode_to_one_message_a_device():
    small = [DevicePart(f"dev-{i}", ClientWindow(sent={"t": i}, sent_max_bytes={"t": 9}, sent_min_bytes={"t": 1}))
             for i in range(2 * PARTS_PER_MESSAGE + 500)]
    batches = batched("node-a", 3, 7, 300.0, small)
    assert [len(b.parts) for b in batches] == [PARTS_PER_MESSAGE, PARTS_PER_MESSAGE, 500]
    assert [m for b in batches for m in b.messages()] == [
        CloudWindowMessage(d.thing, 7, 300.0, "node-a", d.part) for d in small]
    assert decode(encode(batches[0])) == batches[0]
    assert decode(encode_report(ReportMessage("cloud-window-parts", {}, 1.0, 1, "json", "r"))) is None
    # Devices with many addresses: a thousand of them would not fit in one NATS message.
    big = [DevicePart(f"dev-{i}", ClientWindow(source_ips={f"10.0.{j}.{i % 250}": None for j in range(100)}))
           for i in range(PARTS_PER_MESSAGE)]
    split = batched("node-a", 3, 7, 300.0, big)
    assert len(split) > 1 and all(len(encode(b)) <= PARTS_MAX_BYTES for b in split)
    assert [d for b in split for d in b.parts] == big
    # A NATS server configured for 64 KB messages: batches within it, headers included (a thousand
    # of these parts fit in 64 KB since idle fields are left out: 16 KB splits them).
    assert parts_limit(64 * 1024) <= 60 * 1024 and parts_limit(8 * 1024 * 1024) == PARTS_MAX_BYTES
    limit = parts_limit(16 * 1024)
    smaller = batched("node-a", 3, 7, 300.0, small, limit)
    assert len(smaller) > 3 and all(len(encode(b)) <= limit for b in smaller)
    assert [d for b in smaller for d in b.parts] == small


def test_a_broker_node_batches_its_parts_only_while_every_live_node_reads_batches():
    now = [1000.0]
    batches: list[tuple[int, str, CloudWindowParts]] = []
    singles: list[str] = []
    readable = [True]

    async def publish(thing: str, payload: bytes, message_id: str) -> None:
        singles.append(thing)

    async def publish_parts(partition: int, payload: bytes, message_id: str) -> None:
        message = decode(payload)
        assert isinstance(message, CloudWindowParts)
        batches.append((partition, message_id, message))

    intake = CloudEventIntake(300.0, lambda: now[0])
    publisher = WindowPublisher(intake, publish, "node-a", clock=lambda: now[0], publish_parts=publish_parts,
                                batches_readable=lambda: readable[0])
    things = [f"dev-{i}" for i in range(40)]
    for thing in things:
        intake.message_sent(thing, "t", 3)
    now[0] = 1200.0 + 0.2
    assert asyncio.run(publisher.publish_due()) == 40 and singles == []
    assert sorted(d.thing for _, _, b in batches for d in b.parts) == sorted(things)
    assert all(partition_of(d.thing) == partition == b.partition for partition, _, b in batches for d in b.parts)
    assert len(batches) == len({partition_of(thing) for thing in things})  # one batch per partition
    assert all(message_id == f"cloud-parts/node-a/{partition}/3/0" for partition, message_id, _ in batches)
    readable[0] = False  # a node of the release before joined: one message per device again
    intake.message_sent("dev-1", "t", 3)
    now[0] = 1500.0 + 0.2
    assert asyncio.run(publisher.publish_due()) == 1 and singles == ["dev-1"]


def test_a_batch_not_published_loses_its_devices_and_its_partitions_window_is_not_vouched_for():
    now = [1000.0]
    ends: dict[int, CloudWindowEnd] = {}
    things = [f"dev-{i}" for i in range(40)]
    failing = partition_of(things[0], 4)

    async def publish(thing: str, payload: bytes, message_id: str) -> None:
        raise AssertionError("batched")

    async def publish_parts(partition: int, payload: bytes, message_id: str) -> None:
        if partition == failing:
            raise TimeoutError("nats away")

    async def publish_end(partition: int, payload: bytes, message_id: str) -> None:
        end = decode(payload)
        assert isinstance(end, CloudWindowEnd)
        ends[partition] = end

    intake = CloudEventIntake(300.0, lambda: now[0])
    publisher = WindowPublisher(intake, publish, "node-a", clock=lambda: now[0], retry_s=0.05, partitions=4,
                                publish_end=publish_end, publish_parts=publish_parts, end_interval_s=0.0)
    for thing in things:
        intake.message_sent(thing, "t", 3)
    now[0] = 1200.0 + 0.2
    lost = sum(1 for thing in things if partition_of(thing, 4) == failing)
    assert asyncio.run(publisher.publish_due()) == 40 - lost
    assert ends[failing].since == 4  # no longer vouches for window 3 there
    assert all(end.since <= 3 for partition, end in ends.items() if partition != failing)


def test_batches_are_sent_only_when_every_live_node_announces_it_reads_them():
    announced = {"cloud-window-ends": [1, 1], "cloud-window-parts": [1, None]}
    peers = PeersRead(lambda key: announced[key])
    assert peers.ends() and not peers.batches()  # a node of the release before: it reads one part a message
    announced["cloud-window-parts"] = [1, 1]
    assert peers.batches()


def test_parts_are_kept_a_set_per_row_only_when_every_live_node_announces_it_reads_them():
    announced = {"cloud-part-sets": [1, None]}  # a node of the release before announces nothing of it
    peers = PeersRead(lambda key: announced[key])
    assert not peers.part_sets()
    announced["cloud-part-sets"] = [1, 1]
    assert peers.part_sets()
    assert announcement()["cloud-part-sets"] == 1


def test_an_event_counts_in_the_window_the_broker_saw_it_in_unless_that_window_was_closed_since():
    now = [1199.95]
    intake = CloudEventIntake(300.0, lambda: now[0])
    aggregator = intake.aggregator
    intake.message_sent("dev-1", "t", 3)  # unstamped: counted when told
    now[0] = 1200.08  # its batch applied after the window [900, 1200) ended, not yet closed
    intake.message_sent("dev-1", "t", 3, at=1199.97)
    intake.message_sent("dev-1", "t", 3, at=1200.01)
    intake.message_sent("dev-1", "t", 3, at=1260.0)  # from the future (a clock stepped back): now
    assert aggregator.closed_windows(now[0]) == [3]
    assert aggregator.take(3)["dev-1"].sent == {"t": 2}
    intake.message_sent("dev-1", "t", 3, at=1199.99)  # its window was handed over: in the open one
    assert aggregator.take(4)["dev-1"].sent == {"t": 3}


def test_a_broker_node_keeps_no_device_once_its_windows_are_handed_on():
    """A broker node only hands its windows on: it kept every client id that ever connected (and
    each one's last disconnection), read by nothing there, towards the fleet with every device
    that moved or left. Its parts still say when each device connected and disconnected."""
    now = [1000.0]
    sent: dict[str, bytes] = {}

    async def publish(thing: str, payload: bytes, message_id: str) -> None:
        sent[thing] = payload

    intake = CloudEventIntake(300.0, lambda: now[0])
    publisher = WindowPublisher(intake, publish, "node-a", clock=lambda: now[0])
    for i in range(1000):
        intake.connect_attempt(f"dev-{i}", "10.0.0.1", True)
        intake.disconnect(f"dev-{i}")
    now[0] = 1200.0 + 0.2
    assert asyncio.run(publisher.publish_due()) == 1000
    assert intake.aggregator.seen == set() and intake.aggregator.disconnected_at == {}
    part = decode(sent["dev-7"])
    assert isinstance(part, CloudWindowMessage) and part.part.last_disconnect == 1000.0
    closer = Aggregator(300.0)  # what closes windows keeps them, as before
    closer.disconnect("dev-1", 1000.0)
    assert closer.seen == {"dev-1"} and closer.disconnected_at == {"dev-1": 1000.0}


def test_a_round_past_its_retry_time_tries_each_part_once_until_one_fails():
    """The retry time bounds a round against a NATS that is away, not a slow machine: with the
    deadline gone before the first publish (a process descheduled for longer than ``retry_s``, seen
    in a loaded CI run), a healthy round still publishes every part; once one fails, the rest of
    the round is given up untried."""
    now = [1000.0]
    tried: list[str] = []
    away = [False]

    async def publish(thing: str, payload: bytes, message_id: str) -> None:
        tried.append(thing)
        if away[0]:
            raise TimeoutError("nats away")

    intake = CloudEventIntake(300.0, lambda: now[0])
    publisher = WindowPublisher(intake, publish, "node-a", clock=lambda: now[0], retry_s=0.0, concurrency=1)
    for thing in ("dev-1", "dev-2", "dev-3"):
        intake.message_sent(thing, "t", 3)
    now[0] = 1200.2
    assert asyncio.run(publisher.publish_due()) == 3 and sorted(tried) == ["dev-1", "dev-2", "dev-3"]

    away[0], tried[:] = True, []
    for thing in ("dev-1", "dev-2", "dev-3"):
        intake.message_sent(thing, "t", 3)
    now[0] = 1500.2
    assert asyncio.run(publisher.publish_due()) == 0 and len(tried) == 1
