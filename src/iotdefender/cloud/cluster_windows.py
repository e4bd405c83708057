"""Cloud-side metrics in cluster mode: each broker node's windows, merged by the thing's detect node.

A device is connected to one broker node at a time, but over a window it may be seen by several
(it reconnects elsewhere). So a broker node does not turn its windows into datapoints: when a
window ends it publishes, for every device it saw in it, its *part* of that device's window (the
``ClientWindow`` accumulators: counts, largest payloads, addresses, last connect and disconnect)
to the thing's partition on the report stream, as a ``CloudWindowMessage``. The partition's detect
node collects the parts and, ``grace_s`` after the window's end, merges them (counts add up: a
device that moved keeps one series and nothing is counted twice), makes the datapoints exactly as
the single box does (``CloudMetricsService``: every monitored thing of its partitions, 0 when
idle) and stores and evaluates them in one transaction, fenced like a report batch.

Idempotent on redelivery: a part is keyed by (window, thing, broker node), so a redelivered part
replaces itself; a part of a window already closed here is late and dropped (counted in
``iotdefender_cluster_cloud_parts_late_total``). What is NOT kept across a move of the partition
(docs/cluster.md): parts are held in the detect node's memory once acked; a node that gives a
partition up cleanly publishes the parts it holds back to the partition for the next owner
(``hand_over``), but one that dies loses them, so after a crash the window open at the takeover
holds only the parts its new owner received; windows the new owner did
not see start (earlier than the one open at its acquisition) are never closed by it (no second
datapoint for a window the previous owner may have closed).

Why on the report stream: it is already partitioned by thing, read in order by one owner, with
JetStream's de-duplication (``Nats-Msg-Id = cloud/<node>/<thing>/<window>``) and the fence; a
second stream would need its own consumers and ownership. A detect node tells the two kinds of
message apart by the message's first field (``kind``: a tagged msgspec struct, versioned like
``ReportMessage``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
import structlog
from prometheus_client import Counter
from sqlalchemy.engine import Engine

from iotdefender.cloud.aggregator import ClientWindow, merge_windows
from iotdefender.cloud.service import CloudEventIntake, CloudMetricsService
from iotdefender.cluster import fencing
from iotdefender.ingest.report import ReportRejected, check_thing_name
from iotdefender.cluster.partitions import PARTITION_COUNT, partition_of
from iotdefender.cluster.report_stream import BatchHandler, Delivery
from iotdefender.pipeline.batch_store import BatchItem, EventListener, EventSummary, summaries
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.local_store import store_reports
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.store.availability import log_unless_outage

log = structlog.get_logger("iotdefender.cloud")

VERSION = 1
KIND = "cloud-window"

PARTS_PUBLISHED = Counter("iotdefender_cluster_cloud_parts_published",
                          "Device windows a broker node handed to their detect node")
PARTS_LOST = Counter("iotdefender_cluster_cloud_parts_unpublished",
                     "Device windows a broker node could not publish (NATS unavailable): not counted")
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


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CloudWindowMessage)
# A tagged struct is encoded with its tag first, right after the map's header; a ReportMessage
# starts with its "thing" field, so this prefix tells the two kinds apart without decoding.
_MARK = _encoder.encode("kind") + _encoder.encode(KIND)


def encode(message: CloudWindowMessage) -> bytes:
    return _encoder.encode(message)


def decode(payload: bytes) -> CloudWindowMessage | None:
    """The cloud window in ``payload``, or None if it is not one (a report, for the report store)."""
    if payload[1:1 + len(_MARK)] != _MARK:
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


def handover_id(holder: str, message: CloudWindowMessage) -> str:
    """A part a detect node hands to the partition's next owner: not the broker node's id, which
    JetStream would drop as a duplicate within its window; the part itself still names its broker
    node, so at the next owner it replaces (never adds to) a copy of itself."""
    return f"cloud-handover/{holder}/{message.node}/{message.thing}/{message.window}"


def _thing_name(client_id: str) -> bool:
    """Whether a client id can be a thing's name (and so a NATS header and message id): one with a
    control character could not, and is not counted, as ``ingest_events`` refuses it on one box."""
    try:
        check_thing_name(client_id)
    except ReportRejected:
        log.info("cloud_window_client_id_refused", client_id=repr(client_id)[:140])
        return False
    return True


#: (thing, payload, Nats-Msg-Id) -> stored: ``ReportPublisher.publish``.
Publish = Callable[[str, bytes, str], Awaitable[Any]]


async def hand_over(parts: Sequence[CloudWindowMessage], publish: Publish, holder: str,
                    concurrency: int = 256) -> int:
    """Publish the parts a released partition held back to its stream, for its next owner; stops
    at the first failure (a node cut off from NATS must not hold its release for a timeout per
    part): the rest are lost, counted."""
    done = 0
    for start in range(0, len(parts), concurrency):
        chunk = parts[start:start + concurrency]
        results = await asyncio.gather(*(publish(m.thing, encode(m), handover_id(holder, m)) for m in chunk),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        done += len(chunk) - len(failed)
        if failed:
            PARTS_LOST.inc(len(parts) - done)
            log.warning("cloud_window_not_handed_over", parts=len(parts) - done,
                        error=f"{type(failed[0]).__name__}: {failed[0]}")
            break
    return done


class WindowPublisher:
    """A broker node's side: its intake's windows, each device's part published when it ends."""

    def __init__(self, intake: CloudEventIntake, publish: Publish, node: str, delay_s: float = 0.2,
                 concurrency: int = 256, attempts: int = 3, clock: Callable[[], float] = time.time) -> None:
        self.intake, self._publish, self._node = intake, publish, node
        self._delay_s, self._concurrency, self._attempts, self._clock = delay_s, concurrency, attempts, clock

    async def run(self) -> None:
        """Publish each window shortly after its end, forever."""
        aggregator = self.intake.aggregator
        while True:
            now = self._clock()
            await asyncio.sleep(max(0.05, (aggregator.index(now) + 1) * aggregator.window_s - now + self._delay_s))
            await self.publish_due()

    async def publish_due(self) -> int:
        """Every ended window's parts; returns how many were published."""
        aggregator = self.intake.aggregator
        messages = [CloudWindowMessage(thing, window, aggregator.window_s, self._node, part)
                    for window in aggregator.closed_windows(self._clock())
                    for thing, part in aggregator.take(window).items() if _thing_name(thing)]
        done = 0
        for start in range(0, len(messages), self._concurrency):
            results = await asyncio.gather(*(self._send(m) for m in messages[start:start + self._concurrency]))
            done += sum(results)
        return done

    async def _send(self, message: CloudWindowMessage) -> bool:
        payload = encode(message)
        for attempt in range(self._attempts):
            try:
                await self._publish(message.thing, payload, message_id(self._node, message.thing, message.window))
                PARTS_PUBLISHED.inc()
                return True
            except Exception as error:  # the same id on retry: JetStream keeps one copy
                if attempt == self._attempts - 1:
                    log.warning("cloud_window_unpublished", thing=message.thing, window=message.window,
                                error=f"{type(error).__name__}: {error}")
        PARTS_LOST.inc()
        return False


class FencedCloudStore:
    """The ``BatchStore`` a detect node's ``CloudMetricsService`` closes windows into: only the
    things of partitions this node owns and whose window started at or after it acquired them,
    stored and evaluated in one transaction with those partitions' fences checked."""

    pipeline_depth = 1

    def __init__(self, detection: DetectionService, monitoring: MonitoringIndex, on_events: EventListener,
                 owned: Callable[[], Mapping[int, int]], first_window: Mapping[int, int], window_s: float,
                 partitions: int = PARTITION_COUNT) -> None:
        self._detection, self._monitoring, self._on_events = detection, monitoring, on_events
        self._owned, self._first_window, self._window_s = owned, first_window, window_s
        self._partitions = partitions

    def store_batch(self, items: Sequence[BatchItem]) -> list[EventSummary]:
        owned = dict(self._owned())
        kept: list[BatchItem] = []
        fences: dict[int, int] = {}
        for item in items:
            partition = partition_of(item[0], self._partitions)
            window = round(item[2] / self._window_s) - 1  # the item's time is its window's end
            if partition in owned and window >= self._first_window.get(partition, window + 1):
                kept.append(item)
                fences[partition] = owned[partition]
        if not kept:
            return []
        self._monitoring.prime([item[0] for item in kept])
        with self._detection.transaction() as run:
            fencing.check_all(run.conn, fences)
            store_reports(run, self._monitoring, kept)
        events = summaries(run.settled + run.events)
        self._on_events(events)
        return events

    def sweep(self, now: float) -> list[EventSummary]:
        return []  # the partition store's sweep covers these things

    def invalidate(self) -> None:
        self._monitoring.invalidate()

    def close(self) -> None:
        pass


class WindowCollector:
    """A detect node's side: the parts of its partitions' windows, merged and closed ``grace_s``
    after each window's end (the broker nodes publish theirs 0.2 s after it)."""

    def __init__(self, detection: DetectionService, monitoring: MonitoringIndex, on_events: EventListener,
                 owned: Callable[[], Mapping[int, int]], window_s: float, engine: Engine, grace_s: float | None = None,
                 clock: Callable[[], float] = time.time, partitions: int = PARTITION_COUNT) -> None:
        self.grace_s = grace_s if grace_s is not None else min(2.0, window_s / 2)
        self._clock = clock
        self._partitions = partitions
        self._window_s = window_s
        self._parts: dict[tuple[int, str], dict[str, ClientWindow]] = {}
        self._first_window: dict[int, int] = {}  # partition -> the first window this node closes for it
        self._closed_through = -1
        store = FencedCloudStore(detection, monitoring, on_events, owned, self._first_window, window_s, partitions)
        self.cloud = CloudMetricsService(engine, monitoring, store, window_s, clock=self._lagged,
                                         owns=lambda thing: partition_of(thing, partitions) in owned())

    def _lagged(self) -> float:
        return self._clock() - self.grace_s

    # -- on the event loop: the partitions' deliveries --------------------------------------------
    def add(self, partition: int, message: CloudWindowMessage) -> bool:
        """Keep one part (replacing an earlier copy of it); False if it came too late or is not
        this partition's (a broker node of another configuration)."""
        if partition_of(message.thing, self._partitions) != partition or message.window_s != self._window_s:
            log.error("cloud_window_refused", thing=message.thing, partition=partition, window_s=message.window_s)
            return False
        if message.window <= max(self._closed_through, self._first_window.get(partition, 0) - 1):
            PARTS_LATE.inc()
            log.info("cloud_window_late", thing=message.thing, window=message.window, node=message.node)
            return False
        self._parts.setdefault((message.window, message.thing), {})[message.node] = message.part
        return True

    def acquired(self, partition: int) -> None:
        self._first_window[partition] = self.cloud.aggregator.index(self._lagged())

    def released(self, partition: int) -> list[CloudWindowMessage]:
        """Forget the partition; returns the parts held of its windows not closed yet, for the
        next owner (``handover_id``: a clean hand-over loses nothing of the open window)."""
        self._first_window.pop(partition, None)
        handed = []
        for key in [key for key in self._parts if partition_of(key[1], self._partitions) == partition]:
            window, thing = key
            for node, part in self._parts.pop(key).items():
                handed.append(CloudWindowMessage(thing, window, self._window_s, node, part))
        return handed

    def handler(self, reports: BatchHandler) -> BatchHandler:
        """The partitions' handler: cloud windows kept here, the rest handed to ``reports``."""
        async def handle(partition: int, token: int, deliveries: Sequence[Delivery]) -> None:
            rest = []
            for delivery in deliveries:
                message = decode(delivery.payload)
                if message is None:
                    rest.append(delivery)
                else:
                    self.add(partition, message)
            if rest:
                await reports(partition, token, rest)
        return handle

    # -- closing -------------------------------------------------------------------------------------
    def merge_due(self) -> None:
        """Move the parts of every ended window (lagged by the grace) into the aggregator, merged."""
        current = self.cloud.aggregator.index(self._lagged())
        for key in [key for key in self._parts if key[0] < current]:
            window, thing = key
            self.cloud.aggregator.add_window(window, thing, merge_windows(self._parts.pop(key).values()))
        self._closed_through = max(self._closed_through, current - 1)

    def close_due(self) -> int:
        """Merge, then close (in the calling thread; tests call it directly)."""
        self.merge_due()
        return self.cloud.close_due()

    async def run(self) -> None:
        aggregator = self.cloud.aggregator
        while True:
            now = self._lagged()
            await asyncio.sleep(max(0.05, (aggregator.index(now) + 1) * aggregator.window_s - now + 0.05))
            self.merge_due()  # on the loop, where parts are added
            try:
                await asyncio.to_thread(self.cloud.close_due)
            except Exception as error:
                log_unless_outage(log, "cloud_window_failed", error)
