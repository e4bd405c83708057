"""Cloud-side metrics in cluster mode: each broker node's windows, merged by the thing's detect node.

A device is connected to one broker node at a time, but over a window it may be seen by several
(it reconnects elsewhere). So a broker node does not turn its windows into datapoints: when a
window ends it publishes, for every device it saw in it, its *part* of that device's window (the
``ClientWindow`` accumulators: counts, largest payloads, addresses, last connect and disconnect)
to the thing's partition on the report stream: a partition's parts in a few ``CloudWindowParts``
batches, or one ``CloudWindowMessage`` per device while a node of a release before batches lives
(``PeersRead``). The partition's detect
node collects the parts and, ``grace_s`` after the window's end, merges them (counts add up: a
device that moved keeps one series and nothing is counted twice), makes the datapoints exactly as
the single box does (``CloudMetricsService``: every monitored thing of its partitions, 0 when
idle) and stores and evaluates them in one transaction, fenced like a report batch.

Durable until closed (cloud/cluster_parts.py): a part is stored in PostgreSQL, in a transaction
with its partition's fence checked, before its delivery is acked, and deleted when its window is
closed; closing records how far each partition's windows are closed. A node that takes a partition
over (after a clean release or a crash) loads the parts and the mark, and closes every window after
the mark, from ``grace_s`` after its acquisition (the parts its predecessor had not acked are
redelivered to it first): the window open at a crash gets every part received before it, and no
window is closed twice. Idempotent on redelivery: a part is keyed by (window, thing, broker node),
so a redelivered part replaces itself; a part of a window already closed is late and dropped
(``iotdefender_cluster_cloud_parts_late_total``).

Kept together (``keep_many``): every publisher ends a window in all 64 partitions at once, so the
partitions' readers hand the detect node their ends at the same moment. Kept one transaction each
(a commit apiece, on a few worker threads), they queued 64 commits per publisher and end, and a
report that reached a partition after its end waited for them: with ends every second (windows of a
second or less; ``--time-scale 36000`` makes them 8 ms), a device sending one report at a time was answered
after 61-76 ms on average, 8-14% of its reports after more than 0.2 s; with the parts and ends
handed over while one such transaction runs kept in the next, 29-37 ms and 3-5% (one run, 2 cores,
bench/README.md "One device, one report at a time"). Each partition is fenced on its own; when
the transaction fails for a reason of its own, each is kept on its own as before; with the
database away, all fail at once.

Complete or not (cloud/window_ends.py): each publisher ends every window in every partition with a
``CloudWindowEnd`` after its parts, so the detect node knows whether it has every part: a window
that an expected publisher lost (it could not publish a part, or was killed) gives datapoints to
the devices with parts only, never a 0 to a device that may have sent through it. Sent only once
every live node reads them (announced as ``cloud-window-ends`` in the nodes bucket: a detect node
of the release before would take one for a report it cannot read).

Why on the report stream: it is already partitioned by thing, read in order by one owner, with
JetStream's de-duplication (``Nats-Msg-Id = cloud/<node>/<thing>/<window>``, a batch's
``cloud-parts/<node>/<partition>/<window>/<n>``) and the fence; a
second stream would need its own consumers and ownership. A detect node tells the two kinds of
message apart by the message's first field (``kind``: a tagged msgspec struct, versioned like
``ReportMessage``), and its readers set the parts and ends aside (``WindowCollector.aside``,
report_stream.Aside): they are kept while the reports behind them are handled.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from prometheus_client import Counter
from sqlalchemy.engine import Connection, Engine

from iotdefender.cloud.aggregator import ClientWindow, connection_changes, merge_windows
from iotdefender.cloud import cluster_parts
from iotdefender.cloud.cluster_parts import Mark, Seen, StoredPart
from iotdefender.cloud.service import CloudEventIntake, CloudMetricsService
from iotdefender.cloud.window_ends import End, Verdict, WindowEnds, horizon_for
from iotdefender.cluster import fencing
from iotdefender.ingest.report import ReportRejected, check_thing_name
from iotdefender.log_limits import LimitedLog
from iotdefender.message_size import fitting, payload_limit
from iotdefender.cluster.partitions import PARTITION_COUNT, partition_of
from iotdefender.cluster.report_stream import Aside, BatchHandler, Delivery, More, nothing_more
from iotdefender.pipeline.batch_store import BatchItem, EventListener, EventSummary, summaries
from iotdefender.pipeline.batch_isolation import together_or_apart
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.group_commit import GroupCommit
from iotdefender.pipeline.local_store import store_reports
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.pipeline.transaction_metrics import TransactionObserver, observe, timed
from iotdefender.store.availability import log_unless_outage
from iotdefender.store import disconnections
from iotdefender.store.partition_selection import PartitionSelection
from iotdefender.store.database import writing

log = structlog.get_logger("iotdefender.cloud")
# One line per connection of a client whose id cannot be a thing's would follow its reconnections.
_CLIENT_ID_REFUSED_LOG = LimitedLog(log, "cloud_window_client_id_refused", None)
# A part first delivered after its window was closed was not counted: a publisher or a detect node
# slower than the wait for ends (a redelivered copy of a counted part is not one: logged at info).
_LATE_LOG = LimitedLog(log, "cloud_window_late", "iotdefender_cluster_cloud_parts_late_total", level="warning")
# A part of another partition or window length (a node of another configuration): each of a batch's
# 1,000 parts would be a line.
_REFUSED_LOG = LimitedLog(log, "cloud_window_refused", None, level="error")

VERSION = 1
KIND = "cloud-window"

PARTS_PUBLISHED = Counter("iotdefender_cluster_cloud_parts_published",
                          "Device windows a broker node handed to their detect node")
PARTS_LOST = Counter("iotdefender_cluster_cloud_parts_unpublished",
                     "Device windows a broker node could not publish (NATS unavailable): not counted")
WINDOWS_INCOMPLETE = Counter("iotdefender_cluster_cloud_windows_incomplete",
                             "Partition windows closed without every publisher's parts (one lost them, or its end "
                             "did not come in time): only the devices with parts got a datapoint")
PARTS_LATE = Counter("iotdefender_cluster_cloud_parts_late",
                     "Device windows that reached their detect node after it closed the window: not counted")


class CloudWindowMessage(msgspec.Struct, frozen=True, tag_field="kind", tag=KIND):
    """One broker node's part of one device's window."""

    thing: str
    window: int  # the window's index on the grid of window_s seconds
    window_s: float
    node: str  # the broker node that observed it
    part: ClientWindow
    version: int = VERSION


PARTS_KIND = "cloud-window-parts"
#: What a node announces when it reads ``CloudWindowParts``: a publisher batches its parts only
#: once every live node does (a detect node of the release before reads one part per message).
PARTS_ANNOUNCEMENT = "cloud-window-parts"
#: A batch holds at most this many devices' parts, and is split further above ``PARTS_MAX_BYTES``
#: (NATS refuses a message over its ``max_payload``, 1 MB by default; a server configured lower
#: lowers it: ``parts_limit``).
PARTS_PER_MESSAGE = 1000
PARTS_MAX_BYTES = 512 * 1024


class DevicePart(msgspec.Struct, frozen=True, array_like=True):
    """One device's part in a ``CloudWindowParts``."""

    thing: str
    part: ClientWindow


class CloudWindowParts(msgspec.Struct, frozen=True, tag_field="kind", tag=PARTS_KIND):
    """One broker node's parts of one window for many devices of one partition.

    One message per device and window was one JetStream publish each: a broker node took 7.7 s to
    publish 100k devices' parts, and gave up 107k of 200k when its 8 s retry time passed
    (bench/cloud_parts.py); batched, a node publishes a few messages per partition a window."""

    node: str
    partition: int
    window: int
    window_s: float
    parts: list[DevicePart]
    version: int = VERSION

    def messages(self) -> list[CloudWindowMessage]:
        """The batch as the one-device messages it stands for."""
        return [CloudWindowMessage(device.thing, self.window, self.window_s, self.node, device.part)
                for device in self.parts]


END_KIND = "cloud-window-end"
#: What a node announces (shared_settings.py) when it reads ``CloudWindowEnd``s: a publisher sends
#: them only once every live node does.
ENDS_ANNOUNCEMENT = "cloud-window-ends"


class CloudWindowEnd(msgspec.Struct, frozen=True, tag_field="kind", tag=END_KIND):
    """A publisher's end of window in one partition (cloud/window_ends.py, ``End``)."""

    node: str
    began: int
    since: int
    window: int
    window_s: float
    last: bool = False
    version: int = VERSION
    # Whether its devices' connections end with it (``End.hosts``). A node of the release before
    # ignores it; one of the release before sends none: its silence ends no connection, as before.
    hosts: bool = False

    def end(self) -> End:
        return End(self.node, self.began, self.since, self.window, self.last, self.hosts)


#: What a node announces when it reads the parts kept a set per row (cluster_parts.keep_sets): a
#: detect node keeps them so only once every live node does.
SETS_ANNOUNCEMENT = "cloud-part-sets"


def announcement() -> dict[str, int]:
    return {ENDS_ANNOUNCEMENT: VERSION, PARTS_ANNOUNCEMENT: VERSION, SETS_ANNOUNCEMENT: VERSION}


def ends_readable(announced: Sequence[object]) -> bool:
    """Whether every other live node (their announcements as read) reads ends of window."""
    return all(value == VERSION for value in announced)


@dataclass(frozen=True)
class PeersRead:
    """Which of this module's messages every other live node reads, from what they announce
    (``SharedSettings.announced``): a publisher sends a kind only while all of them do."""

    announced: Callable[[str], Sequence[object]]

    def ends(self) -> bool:
        return ends_readable(self.announced(ENDS_ANNOUNCEMENT))

    def batches(self) -> bool:
        return all(value == VERSION for value in self.announced(PARTS_ANNOUNCEMENT))

    def part_sets(self) -> bool:
        return all(value == VERSION for value in self.announced(SETS_ANNOUNCEMENT))


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CloudWindowMessage | CloudWindowParts | CloudWindowEnd)
# A tagged struct is encoded with its tag first, right after the map's header; a ReportMessage
# starts with its "thing" field, so these prefixes tell the kinds apart without decoding.
_MARKS = tuple(_encoder.encode("kind") + _encoder.encode(kind) for kind in (KIND, PARTS_KIND, END_KIND))


def encode(message: CloudWindowMessage | CloudWindowParts | CloudWindowEnd) -> bytes:
    return _encoder.encode(message)


def _marked(payload: bytes) -> bool:
    """Whether ``payload`` is a cloud window part's or end's, without decoding it."""
    return any(payload[1:1 + len(mark)] == mark for mark in _MARKS)


def decode(payload: bytes) -> CloudWindowMessage | CloudWindowParts | CloudWindowEnd | None:
    """The cloud window part, parts or end in ``payload``, or None if it is none of them (a report,
    for the report store)."""
    if not _marked(payload):
        return None
    try:
        message = _decoder.decode(payload)
    except msgspec.DecodeError as error:
        log.error("cloud_window_undecodable", error=str(error))
        return None
    if message.version != VERSION:
        log.error("cloud_window_version", version=message.version, reads=VERSION)
        return None
    return message


def message_id(node: str, thing: str, window: int) -> str:
    return f"cloud/{node}/{thing}/{window}"


def end_message_id(node: str, partition: int, window: int) -> str:
    return f"cloud-end/{node}/{partition}/{window}"


def parts_message_id(node: str, partition: int, window: int, batch: int) -> str:
    return f"cloud-parts/{node}/{partition}/{window}/{batch}"


def parts_limit(max_payload: int) -> int:
    """The bytes a batch may encode to on a server whose messages carry at most ``max_payload``
    bytes (its INFO): ``PARTS_MAX_BYTES``, less on a server configured below 1 MB, leaving room for
    the headers (``Nats-Msg-Id``)."""
    return payload_limit(max_payload, PARTS_MAX_BYTES)


def batched(node: str, partition: int, window: int, window_s: float,
            devices: Sequence[DevicePart], max_bytes: int = PARTS_MAX_BYTES) -> list[CloudWindowParts]:
    """A partition's parts of a window in batches of at most ``PARTS_PER_MESSAGE`` devices, each
    split in halves while it encodes over ``max_bytes`` (devices with many topics or addresses), in
    a fixed order: a round's retries publish the same batches under the same ids."""
    def message(run: Sequence[DevicePart]) -> CloudWindowParts:
        return CloudWindowParts(node, partition, window, window_s, list(run))

    return [message(piece) for start in range(0, len(devices), PARTS_PER_MESSAGE)
            for piece, _ in fitting(devices[start:start + PARTS_PER_MESSAGE], lambda run: encode(message(run)), max_bytes)]


def _thing_name(client_id: str) -> bool:
    """Whether a client id can be a thing's name (and so a NATS header and message id): one with a
    control character could not, and is not counted, as ``ingest_events`` refuses it on one box."""
    try:
        check_thing_name(client_id)
    except ReportRejected:
        _CLIENT_ID_REFUSED_LOG("client_id", client_id=repr(client_id)[:140])
        return False
    return True


#: (thing, payload, Nats-Msg-Id) -> stored: ``ReportPublisher.publish``.
Publish = Callable[[str, bytes, str], Awaitable[Any]]
#: (partition, payload, Nats-Msg-Id) -> stored: ``ReportPublisher.publish_to``.
PublishTo = Callable[[int, bytes, str], Awaitable[Any]]


def _always() -> bool:
    return True


class WindowPublisher:
    """A broker node's side: its intake's windows, each device's part published when it ends, then
    this node's end of the window in every partition (``publish_end``; None: no ends, tests of parts).

    A part is tried again until ``retry_s`` after its window's round began (the same message id:
    JetStream keeps one copy), long enough for a NATS server's failover; past it, once a publish of
    the round failed, the round's remaining parts are given up without trying (NATS is away: trying
    each for its publish timeout would hold the next windows' parts for minutes at fleet size) and
    counted unpublished. A round in which nothing failed tries every part, however long it took. A
    partition in which a part or the end was not published is not vouched for that window
    (cloud/window_ends.py): its detect node gives datapoints only to the devices with parts.

    Ends are published at most every ``end_interval_s`` (an end vouches for every window since the
    last): windows shortened by ``--time-scale`` (8 ms at 36,000) would otherwise cost 64
    publishes per window, thousands a second; their detect node waits for the next end instead.

    Parts go in batches (``CloudWindowParts``, through ``publish_parts``) while every live node
    reads them (``batches_readable``), else one message per device (``publish``), as before."""

    def __init__(self, intake: CloudEventIntake, publish: Publish, node: str, delay_s: float = 0.2,
                 concurrency: int = 256, retry_s: float = 8.0, clock: Callable[[], float] = time.time,
                 publish_end: PublishTo | None = None, partitions: int = PARTITION_COUNT,
                 ends_readable: Callable[[], bool] = _always, end_interval_s: float = 1.0,
                 publish_parts: PublishTo | None = None, batches_readable: Callable[[], bool] = _always,
                 parts_max_bytes: int = PARTS_MAX_BYTES, hosts: bool = False) -> None:
        self.intake, self._publish, self._node = intake, publish, node
        self._hosts = hosts  # its devices are connected to this node's own broker (``End.hosts``)
        self._publish_parts, self._batches_readable = publish_parts, batches_readable
        self._parts_max_bytes = parts_max_bytes
        self._delay_s, self._concurrency, self._retry_s, self._clock = delay_s, concurrency, retry_s, clock
        self._publish_end, self._partitions, self._ends_readable = publish_end, partitions, ends_readable
        # Per partition, the first window of this node's current unbroken run of published windows.
        self._end_interval_s, self._ended_at = end_interval_s, float("-inf")
        self._began = intake.aggregator.index(clock())
        self._since = dict.fromkeys(range(partitions), self._began)

    async def run(self) -> None:
        """Publish each window shortly after its end, forever."""
        aggregator = self.intake.aggregator
        while True:
            now = self._clock()
            await asyncio.sleep(max(0.05, (aggregator.index(now) + 1) * aggregator.window_s - now + self._delay_s))
            await self.publish_due()

    async def publish_due(self) -> int:
        """Every ended window's parts, then the ends; returns how many parts were published."""
        now = self._clock()
        return await self._publish_windows(self.intake.take_closed(now), self.intake.aggregator.index(now) - 1)

    async def _publish_windows(self, windows: Sequence[tuple[int, Mapping[str, ClientWindow]]], through: int,
                               last: bool = False) -> int:
        """The parts of ``windows`` (taken from the intake), then this node's end of every window
        through ``through``."""
        taken = [(window, thing, part) for window, parts in windows
                 for thing, part in parts.items() if _thing_name(thing)]
        units = self._batches(taken) if self._publish_parts is not None and self._batches_readable() \
            else self._one_by_one(taken)
        deadline = time.monotonic() + self._retry_s
        failures: list[BaseException] = []
        lost = 0
        for start in range(0, len(units), self._concurrency):
            chunk = units[start:start + self._concurrency]
            # Until a publish of this round failed, NATS is not known to be away: a round slowed by
            # the machine (a process descheduled past the deadline) tries each part once.
            errors = await asyncio.gather(*(self._send(unit.publish, deadline, at_least_once=not failures)
                                            for unit in chunk))
            for unit, error in zip(chunk, errors):
                if error is not None:  # this node no longer vouches for that window in that partition
                    failures.append(error)
                    lost += unit.parts
                    self._since[unit.partition] = max(self._since[unit.partition], unit.window + 1)
        PARTS_PUBLISHED.inc(len(taken) - lost)
        if failures:
            PARTS_LOST.inc(lost)
            log.warning("cloud_window_unpublished", parts=lost, of=len(taken), windows=[w for w, _ in windows],
                        error=_described(failures[-1]))
        await self._end(through, last, deadline)
        return len(taken) - lost

    def _one_by_one(self, taken: Sequence[tuple[int, str, ClientWindow]]) -> list[_Unit]:
        """A message per device (what a node of the release before batches reads)."""
        window_s = self.intake.aggregator.window_s
        return [_Unit(partition_of(thing, self._partitions), window, 1, functools.partial(
            self._publish, thing, encode(CloudWindowMessage(thing, window, window_s, self._node, part)),
            message_id(self._node, thing, window))) for window, thing, part in taken]

    def _batches(self, taken: Sequence[tuple[int, str, ClientWindow]]) -> list[_Unit]:
        """A few messages per partition and window (``batched``)."""
        assert self._publish_parts is not None
        window_s = self.intake.aggregator.window_s
        grouped: dict[tuple[int, int], list[DevicePart]] = {}
        for window, thing, part in taken:
            grouped.setdefault((partition_of(thing, self._partitions), window), []).append(DevicePart(thing, part))
        return [_Unit(partition, window, len(message.parts), functools.partial(
                    self._publish_parts, partition, encode(message),
                    parts_message_id(self._node, partition, window, index)))
                for (partition, window), devices in grouped.items()
                for index, message in enumerate(batched(self._node, partition, window, window_s, devices,
                                                         self._parts_max_bytes))]

    async def _end(self, window: int, last: bool, deadline: float) -> None:
        """This node's end of ``window`` in every partition; one not published breaks its run."""
        if self._publish_end is None or not self._ends_readable():
            return
        if not last and time.monotonic() - self._ended_at < self._end_interval_s:
            return  # the next round's end vouches for this window too
        self._ended_at = time.monotonic()
        window_s = self.intake.aggregator.window_s
        partitions = range(self._partitions)
        errors = await asyncio.gather(*(self._send(functools.partial(
            self._publish_end, partition,
            encode(CloudWindowEnd(self._node, self._began, self._since[partition], window, window_s, last,
                                  hosts=self._hosts)),
            end_message_id(self._node, partition, window)), deadline, at_least_once=True) for partition in partitions))
        for partition, error in zip(partitions, errors):
            if error is not None:
                self._since[partition] = max(self._since[partition], window + 1)
        failed = [error for error in errors if error is not None]
        if failed:
            log.warning("cloud_window_end_unpublished", partitions=len(failed), window=window,
                        error=_described(failed[-1]))

    async def publish_open(self) -> int:
        """At a graceful stop, once this node's broker stopped (no event comes any more): the parts
        of every window not published yet, the one still open included, now, and this node's last
        end. The detect node keeps them with the other nodes' parts and closes the window at its
        end as usual; a restarted node is a new member (node_id.py), so its own parts of the same
        window add to these."""
        done = await self._publish_windows(sorted(self.intake.take_open().items()),
                                           self.intake.aggregator.index(self._clock()), last=True)
        if done:
            log.info("cloud_windows_handed_over", parts=done)
        return done

    @staticmethod
    async def _send(publish: Callable[[], Awaitable[Any]], deadline: float,
                    at_least_once: bool = False) -> BaseException | None:
        """Publish until it is stored (None) or ``deadline`` (monotonic) passes (the last error;
        nothing is tried past it, but once if ``at_least_once``: an end, 64 at once, costs one
        publish timeout at most, and without it a slow round left a whole window unvouched; a part
        while nothing of its round failed, and without it a process descheduled past the deadline
        gave a healthy round's parts up untried).
        The same message id on every try: JetStream keeps one copy."""
        pause = 0.25
        error: BaseException = TimeoutError("no time left to publish in this round")
        tries = 0
        while time.monotonic() < deadline or (at_least_once and tries == 0):
            tries += 1
            try:
                await publish()
                return None
            except Exception as failed:
                error = failed
                if time.monotonic() + pause >= deadline:
                    break
                await asyncio.sleep(pause)
                pause = min(2.0, pause * 2)
        return error


@dataclass(frozen=True)
class _Unit:
    """One publish of a round: ``parts`` devices' parts of ``window`` in ``partition``."""

    partition: int
    window: int
    parts: int
    publish: Callable[[], Awaitable[Any]]


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


#: A window to close for some partitions: (window, partitions, each device's merged part, the
#: partitions among them whose window is incomplete, the things of those whose parts are whole: the
#: only ones given a datapoint there, and each partition's parts by thing and publisher: where each
#: device's connection is, read in the closing thread, ``_follow_connections``; ~2 us a device,
#: 0.2-0.45 s a window at 200,000 that the event loop would spend).
Closing = tuple[int, frozenset[int], dict[str, ClientWindow], frozenset[int], frozenset[str],
                list[dict[str, dict[str, ClientWindow]]]]


class FencedCloudStore:
    """The ``BatchStore`` a detect node's ``CloudMetricsService`` closes windows into: only the
    things of partitions this node owns, not closed already by a previous owner (its ``Mark``
    within a window), stored and evaluated in one transaction with those partitions' fences checked
    and their closing marks advanced (cloud/cluster_parts.py)."""

    pipeline_depth = 1

    def __init__(self, detection: DetectionService, monitoring: MonitoringIndex, on_events: EventListener,
                 owned: Callable[[], Mapping[int, int]], floors: Mapping[int, Mark], window_s: float,
                 partitions: int = PARTITION_COUNT, on_transaction: TransactionObserver = observe) -> None:
        self._detection, self._monitoring, self._on_events = detection, monitoring, on_events
        self._owned, self._floors, self._window_s = owned, floors, window_s
        self._partitions = partitions
        self._on_transaction = on_transaction  # each committed transaction's seconds and things

    def store_batch(self, items: Sequence[BatchItem]) -> list[EventSummary]:
        if not items:
            return []
        owned = dict(self._owned())
        kept: list[BatchItem] = []
        fences: dict[int, int] = {}
        window = round(items[0][2] / self._window_s) - 1  # an item's time is its window's end
        for item in items:
            partition = partition_of(item[0], self._partitions)
            floor = self._floors.get(partition)
            if partition in owned and not (floor is not None and floor.closed(window, item[0])):
                kept.append(item)
                fences[partition] = owned[partition]
        if not kept:
            return []
        # A chunk holds the things in name order (CloudMetricsService.close_window): its partitions'
        # window is closed up to its last thing.
        through = max(item[0] for item in items)
        self._monitoring.prime([item[0] for item in kept])
        with timed(0, self._on_transaction, len(kept)), self._detection.transaction() as run:
            fencing.check_all(run.conn, fences)
            store_reports(run, self._monitoring, kept)
            cluster_parts.advance(run.conn, {partition: Mark(window, through) for partition in fences})
        events = summaries(run.settled + run.events)
        self._on_events(events)
        return events

    def sweep(self, now: float) -> list[EventSummary]:
        return []  # the partition store's sweep covers these things

    def invalidate(self) -> None:
        self._monitoring.invalidate()

    def close(self) -> None:
        pass


def _connection_at_end(parts: Mapping[str, ClientWindow]) -> tuple[bool, str | None]:
    """(said, node): whether a device's parts of a window (by publisher) say where its connection
    was at the window's end, and on whose broker (None: it had disconnected). Its latest
    connection or disconnection says (a connection on a tie, as ``aggregator.connection_changes``
    reads the merged part); without either, traffic in a part (messages sent or received, a topic
    refused) says it was connected there throughout: it made no connection elsewhere."""
    if len(parts) == 1:  # most devices: one broker node saw them (a shortcut, ~2x faster than the loop)
        ((publisher, part),) = parts.items()
        if part.last_connect_ok or part.last_disconnect:
            return True, publisher if part.last_connect_ok >= part.last_disconnect else None
        return _traffic(part), publisher
    latest: tuple[float, bool] = (0.0, False)
    node: str | None = None
    for publisher, part in parts.items():
        if part.last_connect_ok and (part.last_connect_ok, True) > latest:
            latest, node = (part.last_connect_ok, True), publisher
        if part.last_disconnect and (part.last_disconnect, False) > latest:
            latest, node = (part.last_disconnect, False), None
    if latest[0]:
        return True, node
    for publisher in sorted(parts):
        if _traffic(parts[publisher]):
            return True, publisher
    return False, None


def _traffic(part: ClientWindow) -> bool:
    """Whether the device did something on its connection in the part (refused CONNECTs are not)."""
    return bool(part.sent or part.received or any(topic is not None for topic in part.auth_failures))


def _merged(parts: Mapping[str, ClientWindow]) -> ClientWindow:
    """A device's window from its publishers' parts. A device seen by one publisher (most of them)
    has its part as its window, not a copy: the parts are the closing's alone once taken, and at
    100k devices the copies were most of a merge's 0.5-0.9 s on the event loop (their allocations
    ran the garbage collector). A part from a release without ``sent_min_bytes`` is merged (which
    fills it in) as before."""
    if len(parts) == 1:
        (part,) = parts.values()
        if part.sent_min_bytes.keys() >= part.sent_max_bytes.keys():
            return part
    return merge_windows(parts.values())


#: What one partition's batch keeps: (partition, fencing token, parts, ends).
Keep = tuple[int, int, Sequence[CloudWindowMessage], Sequence[End]]
#: The most window parts ``WindowCollector.keep_many`` keeps in one transaction (its docstring).
PARTS_PER_TRANSACTION = 5_000


class _ClosedIn:
    """``WindowCollector._closed`` of one partition, asked of the collector once per window: what
    closes windows does not run between two calls (the event loop's turn, or a worker thread's
    call that holds no await)."""

    def __init__(self, collector: WindowCollector, partition: int) -> None:
        self._collector, self._partition = collector, partition
        self._windows: dict[int, bool | Callable[[str], bool]] = {}

    def __call__(self, window: int, thing: str) -> bool:
        return cluster_parts.closed_for(self._of(window), thing)

    def none_of(self, window: int) -> bool:
        """Whether no thing of ``window`` is closed (a window's parts as they come: one question)."""
        return self._of(window) is False

    def _of(self, window: int) -> bool | Callable[[str], bool]:
        closed = self._windows.get(window)
        if closed is None:
            closed = self._windows[window] = self._collector._closed_in(self._partition, window)
        return closed


class WindowCollector:
    """A detect node's side: the parts of its partitions' windows, kept in PostgreSQL before they
    are acked, merged and closed ``grace_s`` after each window's end (the broker nodes publish
    theirs 0.2 s after it), each partition's windows in order from where its previous owner left.

    A partition acquired late in (or after) a window is closed from ``grace_s`` after its
    acquisition at the earliest: the parts its previous owner had not acked are redelivered to
    this node first.

    A window whose publishers' ends have not all come by then waits for them ``wait_s`` more
    (cloud/window_ends.py; the broker nodes try their parts for 8 s), and, once the partition's
    reader has handled everything stored until then (``read_through``: a detect node behind its
    backlog has not read the ends yet; a publisher killed sent none), is closed as incomplete;
    at most ``longest_wait_s`` after the grace whatever the backlog. The partition's later
    windows wait behind it. Not while ``ends_in_use`` says a live
    node cannot read ends (a rolling upgrade: the publishers stop sending them, and a window closes
    at its grace, as before ends)."""

    def __init__(self, detection: DetectionService, monitoring: MonitoringIndex, on_events: EventListener,
                 owned: Callable[[], Mapping[int, int]], window_s: float, engine: Engine, grace_s: float | None = None,
                 clock: Callable[[], float] = time.time, partitions: int = PARTITION_COUNT,
                 wait_s: float = 10.0, ends_in_use: Callable[[], bool] = _always,
                 read_through: Callable[[int], float] | None = None, longest_wait_s: float = 120.0,
                 sets_readable: Callable[[], bool] = _always, minute_s: float = 60.0,
                 is_live: Callable[[str], bool] = lambda node: False) -> None:
        self.grace_s = grace_s if grace_s is not None else min(2.0, window_s / 2)
        # Whether a node is a live member of the cluster (its entry in the nodes bucket): a
        # publisher no longer waited for is taken as killed only if it is not (``_connections_lost``).
        self._is_live = is_live
        # (partition, publisher) no longer waited for, still a member then: since when its devices
        # would be disconnected, until it is not a member (killed) or ends a window again (alive).
        self._suspects: dict[tuple[int, str], tuple[int, float]] = {}  # -> (its last window ended, since)
        self.wait_s, self._ends_in_use = wait_s, ends_in_use
        self._sets_readable = sets_readable
        self._read_through, self._longest_wait_s = read_through, longest_wait_s
        self.ends = WindowEnds(horizon_for(wait_s, window_s))
        # partition -> (the last window merged here, each of its things' publishers in it): who may
        # hold the rest of a device's window when a publisher's parts are missing (``_whole``).
        self._seen: dict[int, tuple[int, dict[str, frozenset[str]]]] = {}
        # partition -> its devices this node took as disconnected (loaded or merged), forgotten with
        # it: on a detect node the aggregator's ``disconnected_at`` is filled only from those two.
        self._away: dict[int, set[str]] = {}
        # partition -> connection changes of a window its previous owner closed in part, not
        # recorded yet (``resume``): recorded with this node's next close of the partition.
        self._unrecorded: dict[int, dict[str, float | None]] = {}
        self._distrusted: set[int] = set()  # partitions whose recorded connections a close deletes first
        self._single_publishers: dict[str, frozenset[str]] = {}
        # thing -> the publisher whose broker its connection is on, as its parts last said: when that
        # publisher goes silent for good (killed: ``WindowEnds.gone``), the connection ended with it.
        self._via: dict[str, str] = {}
        self._clock = clock
        self._engine = engine
        self._owned = owned
        self._partitions = partitions
        self._window_s = window_s
        # partition -> window -> thing -> publisher -> its part. By partition and window so that a
        # partition's release, its resumption and a window's merge touch only their own parts: a flat
        # map scanned for each of them hashed every device's name once per partition released or
        # acquired (~1 µs each: 3 s of the event loop for 32 partitions of 100k devices' parts).
        self._parts: dict[int, dict[int, dict[str, dict[str, ClientWindow]]]] = {}
        self._next: dict[int, int] = {}  # partition -> the first window this node has not closed for it
        self._ready: dict[int, float] = {}  # partition -> when this node acquired it
        self._floors: dict[int, Mark] = {}  # partition -> its previous owner's mark within a window
        self._stale: set[int] = set()  # partitions whose closing failed: resumed from the database
        self._released: set[int] = set()  # since the last close: their devices leave ``aggregator.seen``
        self._seen_lock = threading.Lock()  # ``_forget_seen``'s last check and removal against ``resume``
        # The parts and ends the partitions' readers hand over meanwhile, kept in one transaction.
        self._keeps: GroupCommit[Keep, None] = GroupCommit(self.keep_many, "window-part-keeper")
        store = FencedCloudStore(detection, monitoring, on_events, owned, self._floors, window_s, partitions)
        self.cloud = CloudMetricsService(engine, monitoring, store, window_s, clock=self._lagged,
                                         owns=lambda thing: partition_of(thing, partitions) in owned(),
                                         minute_s=minute_s)

    def _lagged(self) -> float:
        return self._clock() - self.grace_s

    def _partition(self, thing: str) -> int:
        return partition_of(thing, self._partitions)

    def _closed(self, partition: int, window: int, thing: str) -> bool:
        """Whether this (window, thing) of the partition was closed already, here or before.

        Not known for a partition whose closing failed (the database was down) until ``recover``
        resumes it from its mark: ``merge_due`` had moved past the windows it failed to close, and
        the parts of those windows that could not be kept meanwhile come back then. Dropped as
        late, most of such a window's counts were lost (an operator's trial: 230 of 600 messages);
        kept, ``resume`` sorts them out."""
        return cluster_parts.closed_for(self._closed_in(partition, window), thing)

    def _closed_in(self, partition: int, window: int) -> bool | Callable[[str], bool]:
        """``_closed`` for every thing of the window at once (True: all, False: none), or, for the
        one window a partition's closing is in the middle of, per thing. At a window's end a node
        receives every device's part at once (200,000 at a time), on the event loop the reports
        wait behind: one answer per window, not one per part."""
        if partition in self._stale:
            return False
        first = self._next.get(partition)
        if first is None or window < first:
            return True
        floor = self._floors.get(partition)
        return False if floor is None else floor.closed_in(window)

    # -- on the event loop: the partitions' deliveries --------------------------------------------
    def _accepted(self, partition: int, messages: Sequence[CloudWindowMessage],
                  redelivered: bool = False) -> Sequence[CloudWindowMessage]:
        """The parts to keep: not those of another partition (a broker node of another
        configuration) or that came too late (their window is closed; ``redelivered``: copies
        JetStream delivers again, most likely of parts counted already)."""
        def ours(message: CloudWindowMessage) -> bool:
            return self._partition(message.thing) == partition and message.window_s == self._window_s

        mine = [message for message in messages if ours(message)]
        if len(mine) < len(messages):
            for message in messages:
                if not ours(message):
                    _REFUSED_LOG("refused", thing=message.thing, partition=partition, window_s=message.window_s)
        return self._on_time(partition, mine, redelivered)

    def _on_time(self, partition: int, messages: Sequence[CloudWindowMessage],
                 redelivered: bool = False) -> Sequence[CloudWindowMessage]:
        """Those of ``messages`` whose window is not closed; the others are counted and logged as
        late. Asked per window, then per part only in a window closed in part or whole."""
        closed = _ClosedIn(self, partition)
        if all(closed.none_of(window) for window in {message.window for message in messages}):
            return messages
        return [message for message in messages if not self._late(message, closed, redelivered)]

    @staticmethod
    def _late(message: CloudWindowMessage, closed: _ClosedIn, redelivered: bool = False) -> bool:
        """Whether the part's window was closed (counted and logged as late)."""
        if closed(message.window, message.thing):
            PARTS_LATE.inc()
            if redelivered:
                log.info("cloud_window_late", thing=message.thing, window=message.window, node=message.node,
                         redelivered=True)
            else:
                _LATE_LOG("late", thing=message.thing, window=message.window, node=message.node)
            return True
        return False

    def _hold(self, partition: int, parts: Iterable[cluster_parts.PartOfWindow]) -> None:
        """Hold parts in memory (each replacing an earlier copy of it)."""
        held = self._parts.setdefault(partition, {})
        for one in parts:
            held.setdefault(one.window, {}).setdefault(one.thing, {})[one.node] = one.part

    def keep(self, partition: int, token: int, messages: Sequence[CloudWindowMessage],
             ends: Sequence[End] = ()) -> None:
        """Store parts and ends in PostgreSQL, fenced (a superseded owner raises ``Fenced``: not
        acked, its successor reads them again); in a worker thread, before the deliveries are acked."""
        keep_parts = self._parts_keeper()
        with writing(self._engine) as conn:
            fencing.check(conn, partition, token)
            keep_parts(conn, partition, messages)
            cluster_parts.keep_ends(conn, partition, ends)

    def _parts_keeper(self) -> Callable[[Connection, int, Iterable[cluster_parts.PartOfWindow]], None]:
        """A set per row once every live node reads them (rolling upgrades), else a row per part."""
        return cluster_parts.keep_sets if self._sets_readable() else cluster_parts.keep

    def keep_many(self, keeps: Sequence[Keep]) -> list[Exception | None]:
        """``keep`` for several partitions' (partition, token, parts, ends) in one transaction, in
        partition order (fence rows locked in the order ``fencing.check_all`` locks them: no cycle
        with a report batch's or a window close's transaction). Per item: None, or ``Fenced`` for a
        partition a newer owner claimed (nothing of it kept; the others are). When the transaction
        fails for a reason of its own (a row the database refuses), each item is kept on its own, so
        one item's fault fails only its own partition's batch, as before items were kept together.
        Not when the database is unavailable, which is no item's fault: each would wait out one more
        connection timeout (``PartitionBatchStore.store_many``); every item fails at once, as do
        those kept apart after an outage shows.

        At most ``PARTS_PER_TRANSACTION`` parts go in one transaction: it holds the fence row of
        every partition in it, and whatever else needs one of those rows waits for it (a node
        claiming the partition, this node's window closes, sweeps and fence moves). At a window's
        end every partition hands its parts over at once, and 200,000 devices' parts in one
        transaction held every fence of the node for 15 s (``bench/cloud_parts.py``, grouped keep).
        The readers set the parts aside (``aside``): the reports behind them do not wait for
        this call, only the partition's later parts and ends do (docs/cluster.md)."""
        return together_or_apart(keeps, self._keep_together, lambda keep: self.keep(*keep),
                                 most=PARTS_PER_TRANSACTION, size=lambda keep: len(keep[2]) + len(keep[3]))

    def _keep_together(self, keeps: Sequence[Keep]) -> list[Exception | None]:
        results: list[Exception | None] = [None] * len(keeps)
        keep_parts = self._parts_keeper()
        with writing(self._engine) as conn:
            for index in sorted(range(len(keeps)), key=lambda i: keeps[i][0]):
                partition, token, messages, ends = keeps[index]
                try:
                    fencing.check(conn, partition, token)
                except fencing.Fenced as error:  # raised before anything of it was written
                    results[index] = error
                    continue
                keep_parts(conn, partition, messages)
                cluster_parts.keep_ends(conn, partition, ends)
        return results

    def handler(self, reports: BatchHandler) -> BatchHandler:
        """The partitions' handler: cloud window parts stored and held here, the rest handed to
        ``reports``; raises (the batch is nakked) if the parts cannot be stored. A reader given
        ``aside`` hands this handler reports only."""
        async def handle(partition: int, token: int, deliveries: Sequence[Delivery],
                         more: More = nothing_more) -> None:
            rest = [delivery for delivery in deliveries if not _marked(delivery.payload)]
            if len(rest) < len(deliveries):
                await self._keep_parts(partition, token, [d for d in deliveries if _marked(d.payload)])
            if rest:
                # What arrives meanwhile joins the reports up to the first part (parts are stored
                # here, before the batch is acked: the next batch takes that one).
                def more_reports(accept: Callable[[Delivery], bool]) -> list[Delivery]:
                    return more(lambda delivery: not _marked(delivery.payload) and accept(delivery))

                await reports(partition, token, rest, more_reports)
        return handle

    def aside(self) -> Aside:
        """What the partitions' readers set aside (report_stream.Aside): the parts and ends of
        windows, kept while the reports behind them are handled."""
        async def keep(partition: int, token: int, deliveries: Sequence[Delivery], more: More = nothing_more) -> None:
            await self._keep_parts(partition, token, deliveries)
        return Aside(lambda delivery: _marked(delivery.payload), keep)

    async def _keep_parts(self, partition: int, token: int, deliveries: Sequence[Delivery]) -> None:
        """Store the parts and ends of windows in ``deliveries`` (fenced, with what the other
        partitions hand over meanwhile), then hold the parts and record the ends. One that cannot
        be decoded (logged by ``decode``) is dropped: no report either."""
        parts: list[CloudWindowMessage] = []
        ends: list[End] = []
        for delivery in deliveries:
            message = decode(delivery.payload)
            if message is None:
                continue
            if isinstance(message, CloudWindowEnd):
                if message.window_s == self._window_s:
                    ends.append(message.end())
                else:
                    log.error("cloud_window_end_refused", node=message.node, window_s=message.window_s)
            else:
                parts.extend(self._accepted(partition, message.messages() if isinstance(message, CloudWindowParts)
                                            else [message], redelivered=delivery.delivered > 1))
        if not parts and not ends:
            return
        await self._keeps((partition, token, parts, ends))
        on_time = self._on_time(partition, parts)  # accepted above; held unless closed meanwhile
        if on_time:
            self._hold(partition, on_time)
        if partition in self._next:
            for end in ends:
                self.ends.record(partition, end)

    def load(self, partition: int) -> tuple[Mark | None, list[StoredPart], list[End], Seen | None, dict[str, float],
                                            list[StoredPart], dict[str, cluster_parts.DeviceConnection]]:
        """What the partition's previous owners left (blocking: a worker thread)."""
        with self._engine.connect() as conn:
            mark, parts, seen, closed_in_part = cluster_parts.load(conn, partition)
            return (mark, parts, cluster_parts.load_ends(conn, partition), seen, disconnections.load(conn, partition),
                    closed_in_part, cluster_parts.load_connections(conn, partition))

    def resume(self, partition: int, mark: Mark | None, parts: Sequence[StoredPart], ends: Sequence[End] = (),
               seen: Seen | None = None, away: Mapping[str, float] | None = None,
               closed_in_part: Sequence[StoredPart] = (),
               connections: Mapping[str, cluster_parts.DeviceConnection] | None = None) -> None:
        """Take the partition over from its mark: the windows after it (the one it stops in, for
        the things after it) are this node's to close, with the parts kept of them, the
        publishers' ends, who saw whom in the window before (``_whole``) and which of its devices
        were disconnected, since when (``aws:disconnect-duration``: as recorded with the last
        window closed whole, then what the parts of a window closed in part say, recorded with
        this node's next close). Never closed before: from the oldest part kept, or the window
        open now. Where its connected devices are (broker node, address) as last recorded, so that
        an idle one keeps its address and counts as disconnected if that broker node dies."""
        current = self.cloud.aggregator.index(self._lagged())
        self._floors.pop(partition, None)
        if mark is None:
            first = min([current, *(part.window for part in parts)])
        elif mark.through is None:
            first = mark.window + 1
        else:
            first = mark.window
            self._floors[partition] = mark
        with self._seen_lock:  # a close forgetting the partition's devices sees it owned again
            self._next[partition] = max(first, current - self.cloud.aggregator.max_catch_up)
        self._ready[partition] = self._clock()
        self.ends.replace(partition, ends)
        self._forget_away(partition)  # also what this node merged of windows whose close failed
        disconnected_at = self.cloud.aggregator.disconnected_at
        if mark is not None and seen is None:
            # Its last window closed for all things was closed by a release that records neither
            # who saw whom nor connections (a rolling upgrade): a device may have come back then.
            # Distrusted, and deleted with this node's first close of the partition.
            self._distrusted.add(partition)
            away = None
        if away:  # a device known away is monitored, registered or not (as the previous owner did)
            disconnected_at.update(away)
            self.cloud.aggregator.seen.update(away)
            self._away[partition] = set(away)
        by_thing: dict[str, list[ClientWindow]] = {}
        for stored in closed_in_part:
            by_thing.setdefault(stored.thing, []).append(stored.part)
        unrecorded = connection_changes({thing: merge_windows(found) for thing, found in by_thing.items()})
        self._unrecorded[partition] = unrecorded
        for thing, since in unrecorded.items():
            self.cloud.aggregator.connection_ended(thing, since)
            if since is not None:
                self.cloud.aggregator.seen.add(thing)
                self._away.setdefault(partition, set()).add(thing)
        if seen is None:
            self._seen.pop(partition, None)  # also what this node merged of a window whose close failed
        else:
            self._seen[partition] = (seen.window, {thing: self._publishers(nodes) for thing, nodes in seen.publishers.items()})
        connected_from = self.cloud.aggregator.connected_from
        for thing in away or ():  # what this node followed of them before is stale (it held the partition)
            self._via.pop(thing, None)
            connected_from.pop(thing, None)
        if connections and partition not in self._distrusted:
            aggregator = self.cloud.aggregator
            for thing, (node, address, since) in connections.items():
                if thing not in disconnected_at:  # connected, as its previous owner had it
                    self._via[thing] = sys.intern(node)
                    aggregator.connected_from[thing] = (address, since)
                    aggregator.seen.add(thing)
        held = self._parts.get(partition, {})
        for window, things in list(held.items()):
            for thing in [thing for thing in things if self._closed(partition, window, thing)]:
                del things[thing]  # held while its closing was unknown (a stale partition's): closed
            if not things:
                del held[window]
        kept = [part for part in parts if not self._closed(partition, part.window, part.thing)]
        if kept:
            self._hold(partition, kept)

    def acquire(self, partition: int) -> None:
        """``load`` and ``resume`` in the calling thread (tests)."""
        self.resume(partition, *self.load(partition))

    async def acquired(self, partition: int) -> None:
        self.resume(partition, *await asyncio.to_thread(self.load, partition))

    def released(self, partition: int) -> None:
        """Forget the partition; its parts stay in PostgreSQL for its next owner. Its devices leave
        the clients seen at the next close (``_forget_seen``, off the event loop)."""
        for suspect in [suspect for suspect in list(self._suspects) if suspect[0] == partition]:
            self._suspects.pop(suspect, None)
        for state in (self._next, self._ready, self._floors, self._seen, self._unrecorded):
            state.pop(partition, None)
        self._distrusted.discard(partition)
        self.ends.forget(partition)
        self._parts.pop(partition, None)
        self._forget_away(partition)
        self._released.add(partition)

    def _forget_seen(self) -> None:
        """Drop from the clients seen (and the addresses they were connected from) the devices of
        the partitions released since the last close and not taken again. They stayed: a node that ever owned a partition kept its devices, every
        one of them read at each close (``CloudMetricsService.monitored``) and hashed to be left
        out, growing towards the fleet with each rebalance. One pass over the clients seen, in the
        closing thread (a pass per release on the event loop was ~0.2 s per partition at 300,000).
        Owned means in ``_next`` (``released`` removes it, ``resume`` sets it, under ``_seen_lock``):
        the leases' view lags a release, and a partition taken again during the pass keeps the
        devices its ``resume`` added."""
        if not self._released:
            return
        released = set(self._released)
        self._released.difference_update(released)  # those taken again since are owned: nothing to forget
        gone = {partition for partition in released if partition not in self._next}
        if not gone:
            return
        seen = self.cloud.aggregator.seen
        found = [(thing, partition) for thing in list(seen) if (partition := self._partition(thing)) in gone]
        with self._seen_lock:
            still = {partition for partition in gone if partition not in self._next}
            forgotten = [thing for thing, partition in found if partition in still]
            seen.difference_update(forgotten)
            connected_from = self.cloud.aggregator.connected_from  # its next owner learns them from the parts
            for thing in forgotten:
                connected_from.pop(thing, None)
                self._via.pop(thing, None)

    def _forget_away(self, partition: int) -> None:
        """Forget when the partition's devices disconnected: its next owner knows better (a device
        that came back meanwhile would otherwise count as away from then on)."""
        disconnected_at = self.cloud.aggregator.disconnected_at
        for thing in self._away.pop(partition, ()):
            disconnected_at.pop(thing, None)

    # -- closing -------------------------------------------------------------------------------------
    def merge_due(self) -> list[Closing]:
        """Take the parts of every window now due, merged, grouped by window (on the loop, where
        parts are added): a partition's windows are due ``grace_s`` after their end and after its
        acquisition."""
        lagged = self._lagged()
        current = self.cloud.aggregator.index(lagged)
        owned = self._owned()
        due: dict[int, dict[int, Verdict]] = {}
        waiting_for_ends = self._ends_in_use()
        for partition, first in list(self._next.items()):
            if partition not in owned or lagged < self._ready[partition] or partition in self._stale:
                continue  # a stale partition's later windows wait: its mark must not pass the failed one
            window = max(first, current - self.cloud.aggregator.max_catch_up)
            while window < current:
                waited_out = self._waited_out(partition, (window + 1) * self._window_s, lagged)
                verdict = self.ends.verdict(partition, window, waited_out)
                if verdict is Verdict.WAIT and not waiting_for_ends:
                    verdict = Verdict.COMPLETE  # nobody sends ends now: closed at its grace, as before them
                if verdict is Verdict.WAIT:
                    break
                due.setdefault(window, {})[partition] = verdict
                window += 1
            self._next[partition] = max(first, window)
        closings: list[Closing] = []
        for window in sorted(due):
            partitions = frozenset(due[window])
            incomplete = frozenset(p for p, verdict in due[window].items() if verdict is Verdict.INCOMPLETE)
            by_partition = {partition: self._parts.get(partition, {}).pop(window, {}) for partition in partitions}
            clients = {thing: _merged(parts) for held in by_partition.values() for thing, parts in held.items()}
            # Each partition's missing publishers once: asked per device, they cost ~10 us each with
            # 50 publishers, seconds of the event loop for a node's devices after a broker node died.
            short = {partition: frozenset(self.ends.short(partition, window)) for partition in incomplete}
            whole = frozenset(thing for partition in incomplete for thing in by_partition[partition]
                              if self._whole(partition, thing, window, clients[thing], short[partition]))
            if incomplete:
                WINDOWS_INCOMPLETE.inc(len(incomplete))
                log.warning("cloud_window_incomplete", window=window, partitions=len(incomplete),
                            publishers=sorted(set().union(*short.values())))
            for partition, held in by_partition.items():
                self._seen[partition] = (window, {thing: self._publishers(parts) for thing, parts in held.items()})
            closings.append((window, partitions, clients, incomplete, whole, list(by_partition.values())))
        return closings

    def _publishers(self, nodes: Collection[str]) -> frozenset[str]:
        """A device's publishers (its parts' nodes); one publisher's set is shared by all its devices (a
        new set for each of 100k devices a window took a quarter of a second of the event loop,
        mostly in the garbage collections their allocations ran)."""
        if len(nodes) != 1:
            return frozenset(nodes)
        (node,) = nodes
        shared = self._single_publishers.get(node)
        if shared is None:
            shared = self._single_publishers[node] = frozenset((node,))
        return shared

    def _whole(self, partition: int, thing: str, window: int, part: ClientWindow, missing: frozenset[str]) -> bool:
        """Whether a device's part of an incomplete window is all of its window: none of the
        publishers whose parts are missing (``missing``: killed, cut off) saw it in the window before (it was not
        on them: a device moving off a killed broker node has only the rest of the window on the
        node it moved to, a part of the truth that raised "too few" alarms; and a takeover of an
        external broker's events reader counts only what follows it). After a takeover, from the
        parts of the window before kept in PostgreSQL (``cluster_parts.Seen``); when those are not
        known (closed by a release before them, or a window far behind): whole if it made no
        connection attempt in the window (one that did may come from a missing publisher)."""
        seen = self._seen.get(partition)
        if seen is None or seen[0] != window - 1:
            return part.connection_attempts == 0
        return seen[1].get(thing, frozenset()).isdisjoint(missing)

    def _waited_out(self, partition: int, end: float, lagged: float) -> bool:
        """Whether a window ended at ``end`` has waited long enough for its publishers' ends: the
        wait is over and the partition was read through its end (an end published by then has
        been read), or the longest wait is over."""
        deadline = end + self.wait_s
        if lagged < deadline:
            return False
        read = self._read_through is None or self._read_through(partition) >= deadline + self.grace_s
        return read or lagged >= end + self._longest_wait_s

    def close(self, closings: Sequence[Closing]) -> int:
        """Close the windows ``merge_due`` took, in order (in a worker thread); returns devices stored."""
        done = 0
        aggregator = self.cloud.aggregator
        closed: dict[int, int] = {}  # partition -> the last window closed for it here
        changes: dict[str, float | None] = {}  # the devices' connections at the end of those windows
        moved: dict[str, str | None] = {}  # the broker node their connections are on, where that changed
        gone: set[tuple[int, str]] = set()  # the (partition, publisher) whose devices were taken as lost
        self._forget_seen()
        try:
            # The registry read once for them all, for their partitions only.
            monitored = (self.cloud.monitored(PartitionSelection(frozenset().union(*(c[1] for c in closings)),
                                                                 self._partition)) if closings else set())
            for window, partitions, clients, incomplete, whole, parts in closings:
                changes.update(self._follow_connections(clients, parts, moved))
                for thing, part in clients.items():
                    aggregator.add_window(window, thing, part)  # what it says of the device's connection
                monitored |= clients.keys()  # seen now (``aggregator.seen`` has them too)
                taken = aggregator.take(window)
                done += self.cloud.close_window(window, taken, owns=self._among(partitions - incomplete),
                                                monitored=monitored)
                if incomplete:
                    done += self.cloud.close_window(window, {t: p for t, p in taken.items() if t in whole},
                                                    owns=self._among(incomplete), seen_only=True,
                                                    monitored=monitored)
                closed.update(dict.fromkeys(partitions, window))
                changes.update(connection_changes(clients))
                # After the window it was found in (one its missing publisher left incomplete): the
                # next one, closed in this same round when it waited, is judged with it.
                lost = self._connections_lost(dict.fromkeys(partitions, window), gone)
                changes.update(lost)
                moved.update(dict.fromkeys(lost))
        finally:
            # One mark per partition for all the windows closed here (short windows close several
            # at a time: a transaction per window was measurable); not past one that failed.
            self._complete(closed, changes, moved)
        return done

    def _follow_connections(self, clients: Mapping[str, ClientWindow],
                         parts: Iterable[Mapping[str, Mapping[str, ClientWindow]]],
                         moved: dict[str, str | None]) -> dict[str, float | None]:
        """Follow where each device's connection is (``_via``) from a window's parts (by partition,
        thing and publisher), noting in ``moved`` those whose connection changed (another broker
        node, a new connection, None: ended; recorded with the close: ``_complete``), and return
        the devices taken as disconnected whose parts now show traffic without a connection: their
        connection had not ended (a broker node cut off from NATS for longer than its horizon,
        taken for killed: ``_connections_lost``), so they are connected again ({thing: None}, a
        connection change)."""
        again: dict[str, float | None] = {}
        disconnected_at = self.cloud.aggregator.disconnected_at
        via = self._via
        named, interned = "", ""  # the publisher's name as decoded from a message, and the one kept
        for held in parts:
            for thing, by_publisher in held.items():
                said, node = _connection_at_end(by_publisher)
                if not said:
                    continue
                if node is None:
                    if via.pop(thing, None) is not None:
                        moved[thing] = None
                    continue
                if node is not named:  # one string per publisher, not per device (or per message)
                    named, interned = node, sys.intern(node)
                part = clients[thing]
                if via.get(thing) is not interned or part.last_connect_ok:
                    via[thing] = moved[thing] = interned
                if not (part.last_connect_ok or part.last_disconnect) and thing in disconnected_at:
                    self.cloud.aggregator.connection_ended(thing, None)
                    again[thing] = None
        return again

    def _connections_lost(self, closed: Mapping[int, int], done: set[tuple[int, str]]) -> dict[str, float]:
        """The devices whose connection was on a broker node that went silent for good (killed; it
        said nothing of it: ``WindowEnds.gone``), as of the partitions' windows closed now
        ({partition: window}): disconnected since the first window it did not vouch for (at most a
        window early), or since their connection there began if that is later. Before, a device
        that did not connect again counted as connected from then on: no
        ``aws:disconnect-duration``, no away windows, its last address in ``aws:source-ip-address``.
        Applied to what the aggregator holds; ``done``: the (partition, publisher) taken as lost
        already (their ends are forgotten at the round's end), to which these are added."""
        for partition in closed:
            for end in self.ends.gone(partition, closed[partition] + 1):
                if (partition, end.node) not in done:
                    self._suspects[(partition, end.node)] = (end.window, (end.window + 1) * self._window_s)
        gone: dict[tuple[int, str], float] = {}
        for (partition, node), (last, since) in list(self._suspects.items()):
            if partition not in closed:
                continue
            latest = self.ends.latest(partition, node)
            if latest is not None and latest.window > last:  # it ended a window again: it was alive
                del self._suspects[(partition, node)]
            # One end lost to a JetStream election is enough for a node to be no longer waited for
            # (a window of 300 s has a horizon of one): alive, it is still a member; a node killed is
            # one no more a lease TTL later, and is suspected until then.
            elif not self._is_live(node):
                del self._suspects[(partition, node)]
                gone[(partition, node)] = since
        if not gone:
            return {}
        done.update(gone)
        aggregator = self.cloud.aggregator
        connected_from, disconnected_at = aggregator.connected_from, aggregator.disconnected_at
        lost: dict[str, float] = {}
        stale: list[str] = []
        for thing, node in list(self._via.items()):
            ended = gone.get((self._partition(thing), node))
            if ended is None:
                continue
            if thing in disconnected_at:  # away already (known from another owner): since when stands
                stale.append(thing)
                continue
            connection = connected_from.get(thing)
            lost[thing] = max(ended, connection[1]) if connection is not None else ended
        for thing in stale:
            self._via.pop(thing, None)
        for thing, since in lost.items():  # monitored from then on, registered or not, as a device known away
            self._via.pop(thing, None)
            aggregator.connection_ended(thing, since)
            aggregator.seen.add(thing)
        log.warning("cloud_connections_lost", devices=len(lost), publishers=sorted({node for _, node in gone}))
        return lost

    def _among(self, partitions: frozenset[int]) -> Callable[[str], bool]:
        return lambda thing: self._partition(thing) in partitions

    def _complete(self, closed: Mapping[int, int], changes: Mapping[str, float | None],
                  moved: Mapping[str, str | None]) -> None:
        """Mark each partition's windows closed through the given one ({partition: window}) for
        every thing, for the partitions still owned, their parts deleted, with their devices'
        connection changes in those windows ({thing: disconnected since, or None}) and where their
        connections are ({thing: broker node, None: none}; ``cluster_parts.record_connections``)."""
        owned = self._owned()
        held = {partition: owned[partition] for partition in closed if partition in owned}
        kept = {thing: since for partition in held for thing, since in self._unrecorded.get(partition, {}).items()}
        connected_from = self.cloud.aggregator.connected_from
        connections = {thing: None if node is None else (node, *connected_from.get(thing, ("", 0.0)))
                       for thing, node in moved.items() if self._partition(thing) in held}
        for thing, since in changes.items():
            partition = self._partition(thing)
            if partition in held:
                kept[thing] = since
            # What the merge told the aggregator, followed even for a partition released meanwhile:
            # forgotten when it is resumed.
            if since is None:
                self._away.get(partition, set()).discard(thing)
            else:
                self._away.setdefault(partition, set()).add(thing)
        if held:
            self._record_connections(connections, held)
            # A partition another node claimed meanwhile is left out, not the whole round: one
            # fenced partition rolled back the marks and the records of every other.
            with writing(self._engine) as conn:
                fenced = fencing.superseded(conn, held)
                mine = {partition: token for partition, token in held.items() if partition not in fenced}
                cluster_parts.advance(conn, {partition: Mark(closed[partition], None) for partition in mine})
                cluster_parts.forget_ends(conn, {partition: self.ends.forgettable_before(closed[partition] + 1)
                                                 for partition in mine})
                disconnections.forget(conn, sorted(self._distrusted & mine.keys()))
                disconnections.apply(conn, {thing: since for thing, since in kept.items()
                                            if self._partition(thing) in mine}, self._partition)
            if fenced:
                log.info("cloud_window_mark_fenced", partitions=sorted(fenced))
            for partition in mine:
                self._unrecorded.pop(partition, None)
                self._distrusted.discard(partition)
        for partition, window in closed.items():
            self.ends.prune(partition, window + 1)
            floor = self._floors.get(partition)
            if floor is not None and floor.window <= window:
                del self._floors[partition]

    def _record_connections(self, connections: Mapping[str, cluster_parts.DeviceConnection | None],
                            held: Mapping[int, int]) -> None:
        """Record where the devices' connections are, in transactions of at most
        ``PARTS_PER_TRANSACTION`` devices, each fenced (a partition claimed meanwhile is left out),
        before the marks: a node's first windows record every device connected (200,000 at a
        node's share of the sizing rule), as does a broker node's death (its devices reconnect
        elsewhere), and a transaction holds the fence rows of its partitions, which the reports
        of those partitions wait for (``keep_many``). Advisory: a device's next part says again.
        What a distrusted partition had recorded (a release before the record owned it) goes first."""
        distrusted = {partition: held[partition] for partition in self._distrusted & held.keys()}
        if distrusted:
            with writing(self._engine) as conn:
                fenced = fencing.superseded(conn, distrusted)
                cluster_parts.forget_connections(conn, sorted(distrusted.keys() - fenced))
        partition_of = {thing: self._partition(thing) for thing in connections}  # each name hashed once
        things = sorted(connections, key=partition_of.__getitem__)
        for start in range(0, len(things), PARTS_PER_TRANSACTION):
            chunk = things[start:start + PARTS_PER_TRANSACTION]
            tokens = {partition: held[partition] for partition in {partition_of[thing] for thing in chunk}}
            with writing(self._engine) as conn:
                fenced = fencing.superseded(conn, tokens)
                cluster_parts.record_connections(conn, {thing: connections[thing] for thing in chunk
                                                        if partition_of[thing] not in fenced}, partition_of.__getitem__)

    def close_due(self) -> int:
        """Merge, then close (in the calling thread; tests call it directly)."""
        return self.close(self.merge_due())

    def _next_due(self) -> float:
        """When the next window of a held partition is due (clock time), at most 1 s from now so a
        partition acquired meanwhile is seen. A window waiting for publishers' ends is due already:
        the loop looks again 0.05 s later, as the ends may come any moment."""
        now = self._clock()
        due = [max((first + 1) * self._window_s, self._ready[partition]) + self.grace_s
               for partition, first in self._next.items() if partition not in self._stale]  # those: each 1 s
        return min([now + 1.0, *due])

    def failed(self, closings: Sequence[Closing]) -> None:
        """A close raised (the database is down): what it did not commit is still in the database
        (the parts, the marks), so its partitions are resumed from there by ``recover``."""
        for _, partitions, _, _, _, _ in closings:
            self._stale |= partitions

    async def recover(self) -> None:
        """Resume the partitions whose closing failed from their mark and kept parts, as a new
        owner would (on the loop; the reads in a worker thread); those the database cannot give
        yet stay for the next round."""
        for partition in sorted(self._stale):
            if partition not in self._next:  # released meanwhile: its next owner resumes it
                self._stale.discard(partition)
                continue
            try:
                loaded = await asyncio.to_thread(self.load, partition)
            except Exception as error:
                log_unless_outage(log, "cloud_window_resume_failed", error)
                return
            self._stale.discard(partition)  # first: ``resume`` asks ``_closed`` what its mark closed
            if partition in self._next:
                self.resume(partition, *loaded)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self._next_due() - self._clock() + 0.05))
            if self._stale:
                await self.recover()
            closings = self.merge_due()  # on the loop, where parts are added
            if not closings:
                continue
            try:
                await asyncio.to_thread(self.close, closings)
            except Exception as error:
                log_unless_outage(log, "cloud_window_failed", error)
                self.failed(closings)
