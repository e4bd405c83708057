"""Reports between nodes: a broker node publishes to its thing's partition, a detect node reads it.

Publishing (``ReportPublisher``): a report the parser accepted goes to ``iotdefender.reports.<p>``
with a ``Nats-Msg-Id`` made from the thing and its report id, and the call returns only when
JetStream's PubAck says it is stored (replicated, on an R3 stream). A broker node that retries after
a lost PubAck, or two broker nodes that both got the same QoS 1 retransmission, store it once:
JetStream drops a message whose id it has seen within the stream's duplicate window and answers
with ``duplicate: true`` (docs.nats.io, "JetStream model deep dive: message deduplication").

Reading (``PartitionReader``): one pull consumer per partition, read by one node at a time
(ownership.py), so the stream order of a partition, and with it the order of each thing's reports,
is the order the handler sees. A batch is acked only after the handler returns (where the
transaction will commit); if the handler raises, the reader keeps the batch and hands it over
again (below). Until the handler's writer takes the batch, what the reader's open pull request
delivers meanwhile can join it (``More``), in order, up to the batch size. A process that dies before acking leaves its batch unacked; the next owner resets the
consumer (``PartitionReader.start``) and, the stream being a work queue that removes acked messages only, reads
again from the first report not acknowledged. A batch whose handler fails is kept and handed over
again, never passed; and a reader never reads past a delivery it did not get (a gap in the
consumer's delivery sequence: lost with a NATS server, or taken by the previous owner's last pull
request) or a batch it handed back: it resets the consumer first, so they come back before
anything newer. Delivery is therefore at least once, in order; storage makes it
exactly-once in effect by being idempotent on each thing's report id (pipeline/partition_store.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from prometheus_client import Counter

from iotdefender.cluster.partitions import partition_of
from iotdefender.cluster.pull import PullStream
from iotdefender.cluster.topology import Topology, ensure_consumer, rewind_consumer

log = structlog.get_logger("iotdefender.cluster")
T = TypeVar("T")

THING_HEADER = "Iotdefender-Thing"
#: Who to tell about a report, outside its payload: a detect node that cannot read the payload (a
#: message of a version it does not read, a corrupt one, a thing of another partition) still
#: answers the device, through its broker node, with the report's id, instead of leaving it to
#: wait for an outcome that never comes (``cluster_commit``: 10 s, then ``ServiceUnavailable``
#: for every resend).
REPLY_HEADER = "Iotdefender-Reply"
REPORT_ID_HEADER = "Iotdefender-Report-Id"

REDELIVERED = Counter("iotdefender_cluster_redeliveries", "Reports a detect node received more than once")
SET_ASIDE = Counter("iotdefender_cluster_set_aside", "Deliveries a detect node's readers set aside (cloud window parts and ends): kept while the reports behind them were handled")

#: Seconds a reader waits for an answer to each JetStream API request of its consumer check (info,
#: and on a reset the rewind or create); it asks again ``retry_pause_s`` later. Normally answered in
#: milliseconds. While the consumer's Raft group elects a leader (one NATS server of three died) a
#: request gets no answer at all, and one sent just before the leader is elected is not answered
#: either: with nats-py's default (5 s) a reader resumed up to 5 s after its consumer had a leader
#: again, and after two unlucky checks 10 s after the kill (bench/nats_stall.py).
CONSUMER_CHECK_TIMEOUT_S = 1.0
#: The same for the first check, when the reader starts (nats-py's default, as before): a start that
#: fails gives the lease back and the partition is acquired again (fence claimed, states loaded), so
#: a busy server answering 64 starts at once is given more time.
START_CHECK_TIMEOUT_S = 5.0


def report_message_id(thing_name: str, report_id: int) -> str:
    """The dedup id of a report: a thing's report id is unique per thing (AWS: "monotonically
    increasing"), so the pair is unique fleet-wide and the same on every broker node."""
    return f"{thing_name}/{report_id}"


class ReportPublisher:
    """A broker node's side: store an accepted report in its thing's partition, exactly once."""

    def __init__(self, js: JetStreamContext, topology: Topology, timeout_s: float = 5.0) -> None:
        self._js, self._topology, self._timeout_s = js, topology, timeout_s

    async def publish(self, thing_name: str, payload: bytes, message_id: str, reply_to: str | None = None,
                      report_id: int | None = None) -> PubAck:
        """Store ``payload``; returns the PubAck (``duplicate`` set when JetStream already had it).
        ``reply_to`` and ``report_id`` (a report's) go in headers too (``REPLY_HEADER``).

        Raises on a timeout or a JetStream error: the report is then NOT stored and the device must
        not be told ``accepted``.
        """
        partition = partition_of(thing_name, self._topology.partitions)
        headers = {"Nats-Msg-Id": message_id, THING_HEADER: thing_name}
        if reply_to is not None and report_id is not None:
            headers[REPLY_HEADER], headers[REPORT_ID_HEADER] = reply_to, str(report_id)
        return await self._store(partition, payload, headers)

    async def publish_to(self, partition: int, payload: bytes, message_id: str) -> PubAck:
        """Store ``payload`` in a partition, for no thing (a broker node's end of a cloud window)."""
        return await self._store(partition, payload, {"Nats-Msg-Id": message_id})

    @property
    def partitions(self) -> int:
        return self._topology.partitions

    async def _store(self, partition: int, payload: bytes, headers: dict[str, str]) -> PubAck:
        return await self._js.publish(self._topology.subject_of(partition), payload, timeout=self._timeout_s,
                                      stream=self._topology.stream, headers=headers)


@dataclass(frozen=True)
class Delivery:
    """One report as a detect node receives it."""

    partition: int
    thing_name: str
    payload: bytes
    #: The report's position in the stream: unique and stable across redeliveries (its outcome's key).
    stream_sequence: int
    #: 1 on first delivery, more when JetStream redelivers (after a crash, or a batch handed back).
    delivered: int
    #: The broker node's reply subject and the report's id from the headers (``REPLY_HEADER``):
    #: None from a broker node of a release before them, or on a message that is not a report.
    reply_to: str | None = None
    report_id: int | None = None


#: What the partition's reader received after the batch it handed over: ``more(accept)`` takes
#: it, in stream order and without waiting, up to the first delivery ``accept`` refuses (left for
#: the reader's next batch) and within the reader's batch size; what it returns joins the batch
#: (acked with it, handed back with it). The writer calls it when its transaction starts, so a
#: report that reached a partition whose batch was still waiting for the writer is stored with
#: that batch instead of one transaction later (pipeline/partition_store.py).
More = Callable[[Callable[[Delivery], bool]], list[Delivery]]

#: The detect node's work: called with (partition, fencing token, batch, more); returns once committed.
BatchHandler = Callable[[int, int, Sequence[Delivery], More], Awaitable[None]]


def nothing_more(accept: Callable[[Delivery], bool]) -> list[Delivery]:
    """The ``More`` of a batch that nothing can be added to (tests, tools, a redelivered batch)."""
    return []


@dataclass(frozen=True)
class Aside:
    """Deliveries a reader settles beside its batches instead of in them: those ``takes`` says are
    handed to ``handler`` (in stream order, one call at a time, with ``nothing_more``) and acked
    when it returns, while the reader goes on reading and hands the rest to the batch handler.

    Why: a detect node keeps cloud window parts in PostgreSQL before it acks them (a set per
    broker node and window, cloud/cluster_parts.py), and at a window's end every partition's parts
    arrive at once. Kept in the batch, they made every report behind them wait for all of them:
    up to ~1.8 s at 200,000 devices a node (bench/README.md, "A set per row"). Nothing a report
    does needs the parts kept (they only count in the window's close, ``grace`` after its end,
    which waits for their publishers' ends, themselves set aside behind them), so the reports
    behind them are handled at once.

    Correct after a crash because the stream is a work queue: a report acked after a part still
    unacked is gone, the part stays, and the next owner's reset consumer delivers it again first
    (``start``); its handler is idempotent (a part is keyed by window, thing and broker node).
    A partition's set-aside deliveries are handled in order, so an end of window is never held
    before the parts it follows. ``read_through`` does not pass what is set aside until it is
    settled, and the reader settles everything set aside before it checks or resets its consumer
    (``_bind``: a delivery still set aside is not one lost) and before it stops."""

    takes: Callable[[Delivery], bool]
    handler: BatchHandler


@dataclass
class _SetAside:
    """One call of an ``Aside`` handler in progress: its settling task, and the ``read_through``
    that holds once it is settled (everything stored before it was handled, but for this)."""

    task: asyncio.Task[bool]
    read_through: float | None = None


def _settled(task: asyncio.Task[bool]) -> bool:
    """Whether a set-aside call that is done was settled (acked), not handed back."""
    return not task.cancelled() and task.exception() is None and task.result()


def _delivery(partition: int, msg: Msg) -> Delivery:
    meta = msg.metadata
    headers = msg.headers or {}
    return Delivery(partition=partition, thing_name=headers.get(THING_HEADER, ""), payload=msg.data,
                    stream_sequence=meta.sequence.stream, delivered=meta.num_delivered,
                    reply_to=headers.get(REPLY_HEADER) or None, report_id=_report_id(headers.get(REPORT_ID_HEADER)))


def _report_id(header: str | None) -> int | None:
    """The report id header's value; None when absent or not a decimal number (a corrupt header
    must not stop the partition's reader)."""
    try:
        return int(header) if header is not None and header.isascii() else None
    except ValueError:
        return None


class PartitionReader:
    """Reads one partition in order and hands each batch to the handler; acks after it returns."""

    def __init__(self, js: JetStreamContext, topology: Topology, partition: int, handler: BatchHandler,
                 token: int, still_owner: Callable[[], bool], batch: int = 256, fetch_wait_s: float = 0.5,
                 retry_pause_s: float = 0.2, idle_check_s: float = 10.0,
                 check_timeout_s: float = CONSUMER_CHECK_TIMEOUT_S, aside: Aside | None = None) -> None:
        self._js, self._topology, self._partition = js, topology, partition
        self._handler, self._still_owner, self._aside = handler, still_owner, aside
        # The newest call of ``aside``'s handler (each waits for the one before), and whether one
        # was handed back (nakked): the consumer is then reset, so it comes back in order.
        self._set_aside: _SetAside | None = None
        self._aside_handed_back = False
        self._taken = 0  # deliveries the last batch took, with those set aside and those ``more`` added
        self.token = token  # the fencing token its batches carry (moved when the lease is re-created)
        self._batch, self._fetch_wait_s, self._retry_pause_s = batch, fetch_wait_s, retry_pause_s
        self._idle_check_s, self._check_timeout_s = idle_check_s, check_timeout_s
        self._check_failures, self._check_failing_since = 0, 0.0  # the consumer checks failing in a row
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The consumer sequence the next delivery must carry (None: not known yet). JetStream numbers
        # a consumer's deliveries 1, 2, 3... (redeliveries too); a jump means one went elsewhere.
        self._next_delivery: int | None = None
        self._gap = False  # a delivery went missing after the batch in hand: add nothing to it
        self.handled = 0
        self.redelivered = 0
        # Everything stored in the partition before this time (wall clock) has been handled: a fetch
        # asked then got fewer than a batch (or nothing) and its messages were handled. A detect
        # node that waits for a broker node's end of a cloud window tells a publisher that sent
        # none (killed) from a backlog it has not read yet by it (cloud/cluster_windows.py).
        self.read_through = float("-inf")

    async def start(self) -> None:
        """Bind to the partition's consumer and start reading.

        If the consumer has reports delivered but not acknowledged (a previous owner died with a
        batch in hand), it is rewound first (``topology.rewind_consumer``: to its ack floor; on a
        server before 2.14 deleted and created again), so that batch is read again at once and
        before any newer report of the same things, not after ``ack_wait`` and out of order: in a
        work-queue stream the rewound consumer starts at the oldest report not yet acknowledged. (A previous
        owner's pull requests expire within ``fetch_wait_s``, far shorter than a lease, so none is
        left to take reports after this check.)

        Why not simply wait for ``ack_wait``: redelivered reports then interleave with new ones out
        of stream order (nats-io/nats-server#6114, "Inconsistent stream messages consumption
        ordering": a batch fetched by a consumer that died comes back after newer messages). And a
        work-queue stream keeps a report "until consumed [...] and explicitly acknowledged"
        (docs.nats.io, JetStream model deep dive, WorkQueuePolicy), which is what makes the
        rewound consumer start at the first unacked one.
        """
        sub = await self._bind(None, START_CHECK_TIMEOUT_S)
        self._task = asyncio.create_task(self._run(sub), name=f"partition-{self._partition}")

    async def _bind(self, sub: PullStream | None, timeout: float) -> PullStream:
        """``sub`` if the consumer has nothing delivered and unacknowledged, else a new binding to
        the consumer rewound (see ``start``). Called only when this reader holds no batch, so
        what the consumer counts unacknowledged was lost on its way (a previous owner's, or a
        delivery in flight when a NATS server died: it would come back only after ``ack_wait``).
        Each JetStream request waits ``timeout`` for its answer."""
        name = self._topology.consumer_of(self._partition)
        try:
            info = await self._js.consumer_info(self._topology.stream, name, timeout=timeout)
            pending = info.num_ack_pending
            delivered = (info.delivered.consumer_seq or 0) if info.delivered is not None else 0
        except nats.js.errors.NotFoundError:
            pending, delivered = None, 0
        if sub is not None and pending == 0:
            return sub
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        # A rewind or create that timed out may still happen on the server: the next check finds
        # the consumer there without deliveries unacknowledged (bound as it is), or rewinds it again.
        if pending:
            log.info("cluster.consumer_reset", partition=self._partition, unacked=pending)
            delivered = await rewind_consumer(self._js, self._topology, self._partition, timeout)
        elif pending is None:
            await ensure_consumer(self._js, self._topology, self._partition, timeout)
            delivered = 0  # a new consumer numbers its deliveries from 1
        self._next_delivery = delivered + 1
        # nats-py 2.16.0 (pinned) keeps the context's connection and API prefix in these attributes.
        stream = PullStream(self._js._nc, self._js._prefix, self._topology.stream, name, self._batch,
                            self._fetch_wait_s)
        await stream.start()
        return stream

    @property
    def reading(self) -> bool:
        """Started (bound to its consumer) and not ended."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Finish the batch in hand (handled and acked, or nakked), then stop reading."""
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _run(self, sub: PullStream | None) -> None:
        # After a disturbance (a failed fetch, a pause) and, when idle, every ``idle_check_s``, the
        # consumer is checked for deliveries lost on their way (``_bind``): when a NATS server dies,
        # a batch it was delivering is counted delivered and would otherwise wait for ``ack_wait``.
        loop = asyncio.get_running_loop()
        disturbed, next_check = False, loop.time() + self._idle_check_s
        try:
            while not self._stopping.is_set():
                if not self._still_owner():
                    # The lease is not valid now: in doubt while NATS elects a leader (it resumes once
                    # confirmed), or lost (its owner stops this reader). Read nothing meanwhile.
                    disturbed = True
                    await asyncio.sleep(self._retry_pause_s)
                    continue
                if self._aside_handed_back:
                    disturbed = True
                if sub is None or disturbed:
                    await self._settle_aside()  # still set aside is not lost: not for the check to reset
                    # What was handed back comes again from the reset consumer, after nothing.
                    self._set_aside, self._aside_handed_back = None, False
                    try:
                        sub = await self._bind(sub, self._check_timeout_s)
                    except nats.errors.ConnectionClosedError:
                        return
                    except (nats.errors.Error, asyncio.TimeoutError) as err:
                        self._check_failed(err, loop.time())
                        sub = None  # bind again next round (its old binding may be gone)
                        await asyncio.sleep(self._retry_pause_s)
                        continue
                    self._check_passed(loop.time())
                    disturbed, next_check = False, loop.time() + self._idle_check_s
                requested = time.time()
                try:
                    msgs = await sub.fetch(self._batch, timeout=self._fetch_wait_s)
                except asyncio.TimeoutError:  # nats.errors.TimeoutError is one too: nothing to read
                    # Not while something is set aside: the check would wait for it, and so would
                    # the reports that arrive meanwhile (it is checked once that is settled).
                    disturbed = loop.time() >= next_check and not self._aside_pending()
                    self._read_through(requested)
                    continue
                except nats.errors.ConnectionClosedError:
                    return
                except nats.errors.Error as err:  # a cluster election, a consumer being recreated
                    log.warning("cluster.fetch_failed", partition=self._partition, error=repr(err))
                    disturbed = True
                    await asyncio.sleep(self._retry_pause_s)
                    continue
                in_order = self._in_order(msgs)
                self._gap = len(in_order) < len(msgs)  # a delivery went missing before msgs[len(in_order)]
                self._taken = len(in_order)
                if in_order:  # nats-py's fetch can end with no message (only status replies): nothing to hand
                    disturbed = not await self._handle(sub, in_order)
                if self._gap:
                    disturbed = True  # reset the consumer first (_bind), so the missing one comes next
                elif not disturbed and max(len(msgs), self._taken) < self._batch:
                    self._read_through(requested)  # fewer than asked for: nothing else was stored then
        finally:
            await self._settle_aside()  # acked once handled, or handed back: never left unacked here
            if sub is not None:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    def _read_through(self, requested: float) -> None:
        """Everything stored before ``requested`` was fetched, and is handled once what is set
        aside now is settled: at once if nothing is. Not at all once something set aside was handed
        back: it comes again after the consumer is reset (``_run``)."""
        if self._aside_handed_back:
            return
        newest = self._set_aside
        if newest is None:
            self.read_through = max(self.read_through, requested)
        elif not newest.task.done():
            newest.read_through = requested
        elif _settled(newest.task):
            self.read_through = max(self.read_through, requested)

    def _aside_pending(self) -> bool:
        return self._set_aside is not None and not self._set_aside.task.done()

    async def _settle_aside(self) -> None:
        """Wait until everything set aside is settled (acked or handed back)."""
        newest = self._set_aside
        if newest is not None:
            await asyncio.wait([newest.task])

    async def _extending(self, task: asyncio.Future[T], msgs: list[Msg]) -> T:
        """``task``'s result, the ack deadline of ``msgs`` extended (``in_progress``) every third
        of ``ack_wait`` meanwhile: deliveries set aside wait for those before them and for their
        keep, and past ``ack_wait`` JetStream would deliver them again, to be kept twice."""
        period = self._topology.ack_wait_s / 3
        while True:
            done, _ = await asyncio.wait([task], timeout=period)
            if done:
                return task.result()
            with contextlib.suppress(nats.errors.Error):
                for msg in msgs:
                    await msg.in_progress()

    def _put_aside(self, msgs: list[Msg], deliveries: list[Delivery]) -> None:
        """Settle ``msgs`` with the ``Aside`` handler after what was set aside before them."""
        assert self._aside is not None
        before = self._set_aside
        handler = self._aside.handler
        SET_ASIDE.inc(len(msgs))

        async def settle() -> bool:
            settled = False
            try:
                if before is not None and not await self._extending(before.task, msgs):
                    for msg in msgs:  # the one before was handed back: these must follow it
                        await msg.nak()
                else:
                    settled = await self._settle(msgs, deliveries, handler, nothing_more, extend=True)
            except nats.errors.Error as error:  # an ack or nak lost: the consumer check finds them
                log.warning("cluster.aside_not_settled", partition=self._partition, error=repr(error))
            if not settled:
                self._aside_handed_back = True
            elif this.read_through is not None:
                self.read_through = max(self.read_through, this.read_through)
            return settled

        # ``settle`` reads ``this``: the task first runs when this coroutine next yields, after this line.
        this = _SetAside(asyncio.create_task(settle(), name=f"partition-{self._partition}-aside"))
        self._set_aside = this

    def _check_failed(self, err: Exception, now: float) -> None:
        """The first failure of a streak is logged; the others (one a second or so while the
        consumer elects a leader) are counted and told when the check passes again."""
        if not self._check_failures:
            self._check_failing_since = now
            log.warning("cluster.consumer_check_failed", partition=self._partition, error=repr(err))
        self._check_failures += 1

    def _check_passed(self, now: float) -> None:
        if self._check_failures:
            log.info("cluster.consumer_check_passed", partition=self._partition, failed=self._check_failures,
                     after_s=round(now - self._check_failing_since, 2))
        self._check_failures = 0

    def _in_order(self, msgs: list[Msg]) -> list[Msg]:
        """The leading ``msgs`` that follow the last delivery without a gap in consumer sequence.

        A gap is a delivery that never reached this reader: sent on a connection to a NATS server
        that died, or taken by a pull request of the partition's previous owner, which lingers for
        up to ``fetch_wait_s`` after the lease moved. Handling what came after it would commit
        newer reports first and leave the missing one to come back only after ``ack_wait``, after
        reports that followed it; the reader stops at the gap and resets the consumer instead
        (``_bind``), so the missing delivery comes first."""
        for index, msg in enumerate(msgs):
            sequence = msg.metadata.sequence.consumer
            if self._next_delivery is not None and sequence != self._next_delivery:
                log.warning("cluster.delivery_missing", partition=self._partition, expected=self._next_delivery,
                            received=sequence)
                return msgs[:index]
            self._next_delivery = sequence + 1
        return msgs

    def _more(self, sub: PullStream, msgs: list[Msg], deliveries: list[Delivery],
              accept: Callable[[Delivery], bool]) -> list[Delivery]:
        """The ``More`` of the batch in hand (``msgs``): what the open pull request delivered since,
        in order, added to ``msgs`` and ``deliveries`` (so acked, kept or nakked with them), at most
        up to the batch size. Nothing once a delivery went missing (the consumer is reset after
        this batch), nor while this reader stops or its lease is not valid."""
        if self._gap or self._stopping.is_set() or not self._still_owner():
            return []
        aside = self._aside

        def joins(delivery: Delivery) -> bool:  # what is set aside is never in a batch
            return (aside is None or not aside.takes(delivery)) and accept(delivery)

        try:
            fetched = sub.take_delivered(self._batch - len(msgs), lambda msg: joins(_delivery(self._partition, msg)))
            in_order = self._in_order(fetched)
        except Exception:  # what it took is lost to this reader: reset the consumer after the batch
            log.exception("cluster.batch_not_extended", partition=self._partition)
            self._gap = True
            return []
        self._gap = len(in_order) < len(fetched)
        added = [_delivery(self._partition, msg) for msg in in_order]
        msgs.extend(in_order)
        deliveries.extend(added)
        return added

    async def _handle(self, sub: PullStream, msgs: list[Msg]) -> bool:
        """Hand the batch over and ack it once the handler returns; False if it was handed back
        (nakked) instead, and the reader must check its consumer before reading on (``_bind``).
        What ``aside`` takes is set aside first (``_put_aside``), the rest is the batch. Sets
        ``_taken``: how many deliveries it took in all (with what ``more`` added)."""
        fetched = len(msgs)
        deliveries = [_delivery(self._partition, msg) for msg in msgs]
        if self._aside is not None:
            taken = [self._aside.takes(delivery) for delivery in deliveries]
            if any(taken):
                self._put_aside([m for m, aside in zip(msgs, taken) if aside],
                                [d for d, aside in zip(deliveries, taken) if aside])
                msgs = [m for m, aside in zip(msgs, taken) if not aside]
                deliveries = [d for d, aside in zip(deliveries, taken) if not aside]
                if not msgs:
                    return True

        def more(accept: Callable[[Delivery], bool]) -> list[Delivery]:
            return self._more(sub, msgs, deliveries, accept)

        in_batch = len(msgs)
        settled = await self._settle(msgs, deliveries, self._handler, more, sub)
        self._taken = fetched + len(msgs) - in_batch
        return settled

    async def _settle(self, msgs: list[Msg], deliveries: list[Delivery], handler: BatchHandler, more: More,
                      sub: PullStream | None = None, extend: bool = False) -> bool:
        """Call ``handler`` until it returns, then ack ``msgs``; False if they were handed back
        (nakked) instead. With ``sub`` (a batch, which ``more`` extends), its pull request is kept
        open while the handler runs, so what arrives meanwhile can join. ``extend``: their ack
        deadline is extended while the handler runs (``_extending``).

        Deliveries whose handler fails (the database is away) stay in hand and are handed over
        again after ``retry_pause_s``, their ack deadline extended each time (``in_progress``):
        nakking them let the reports the open pull request had already brought be handled before
        they came back (per-thing order broken), and resetting the consumer after every nak would
        churn JetStream for as long as the database is away. They are handed back only when this
        reader must stop or its lease is no longer valid."""
        attempt = 0
        while True:
            if not self._still_owner() or (attempt and self._stopping.is_set()):
                # The lease ran out (in doubt, or lost): hand the batch back rather than commit as a
                # stale owner (and read nothing until it is confirmed or this reader stops). Or a
                # retry while stopping: the next owner takes the batch. (A batch just fetched is
                # still handled when the reader is asked to stop: a handover acks what it holds.)
                for msg in msgs:
                    await msg.nak()
                return False
            attempt += 1
            try:
                if sub is not None and len(msgs) < self._batch and not self._gap:
                    with contextlib.suppress(nats.errors.Error):  # nothing joins the batch then
                        await sub.keep_open(self._fetch_wait_s)
                call = handler(self._partition, self.token, list(deliveries), more)
                await (self._extending(asyncio.ensure_future(call), msgs) if extend else call)
                break
            except Exception as error:
                if attempt == 1:
                    log.exception("cluster.batch_failed", partition=self._partition, reports=len(msgs))
                elif attempt & (attempt - 1) == 0:  # 2, 4, 8...: an outage is logged, not flooded
                    log.warning("cluster.batch_failed_again", partition=self._partition, attempts=attempt,
                                error=f"{type(error).__name__}: {error}")
            with contextlib.suppress(nats.errors.Error):  # NATS away too: the ack wait runs on
                for msg in msgs:
                    await msg.in_progress()
            await asyncio.sleep(self._retry_pause_s)
        for msg in msgs:
            await msg.ack()
        self.handled += len(deliveries)
        again = sum(1 for d in deliveries if d.delivered > 1)
        self.redelivered += again
        REDELIVERED.inc(again)
        return True
