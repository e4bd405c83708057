"""A detect node's batch unit of work in cluster mode: one partition's deliveries, fenced and idempotent.

``DetectConsumer`` (cluster/node.py) hands each batch a partition's reader fetched to ``handle``
and acks it once that returns; ``on_acquired``/``on_released`` follow the node's partitions. The
transaction is the single box's (``local_store.store_reports`` inside ``detection.transaction()``)
with two things added, both in the same transaction:

- ``fencing.check``: a node whose lease was superseded (paused, cut off) commits nothing; ``Fenced``
  propagates, the batch is not acked and its next owner reads it;
- each thing's stored report id (``thing_report_state``, written by the same transactions): a
  delivery whose report id a committed transaction already stored is not stored again and counts
  as stored (``DUPLICATE``); one below it is refused ``StaleReportId`` (``_in_report_order``). That
  covers the crash between commit and ack (the next owner gets the batch again) and a device's
  resend that JetStream no longer recognises.

Why not a per-partition "highest stream sequence committed" mark (the first design): it is exact
only if a partition's deliveries are committed in stream order with no gap, and they are not always
— a delivery lost with a NATS server, or nakked while its reader already held newer ones, comes
back after reports that followed it were committed, and such a mark counted it as stored although
it never was (one accepted report in ~1,500 lost in test_cluster_nats3). The reader now keeps
stream order across those cases too (report_stream.py); the report id per thing does not depend on it.

Batch isolation (``batch_isolation.store_isolating``) still applies: a report the database refuses
is set aside (answered ``InternalError``) and the others are stored, in index order:

- a report set aside is tried again if its batch is redelivered (its thing's report id did not advance);
- ``Fenced`` is *fatal*, not bisected: nothing more may be stored; what committed before it
  advanced its things' report ids, so the next owner counts it ``DUPLICATE``;
- a database outage is not answered at all: ``StoreUnavailable`` is raised, so the batch is not
  acked and stays in the stream (its reader hands it over again; it is stored once the database
  is back; what committed before the outage is recognised then). Acking with ``ServiceUnavailable`` would lose the report for good: the
  device's resend carries the same ``Nats-Msg-Id`` and JetStream drops it within its duplicate
  window.

A message that does not decode (``report_message.UndecodableReport``) or whose thing belongs to
another partition is answered ``InternalError`` and acked: a poison message must not wedge its
partition. Its device is told through its broker node when the message's headers name the reply
subject and the report id (``report_stream.REPLY_HEADER``), as a broker node's reports do. Per-thing order holds because a partition's deliveries come in stream order and one
node at a time reads a partition.

Batches of several partitions that wait at the same time (each partition's reader hands one over
and waits) are committed together in one transaction (``store_many``): one commit instead of one
per partition, each partition still fenced and its progress advanced; when that transaction fails
for any reason, each batch is stored on its own as described above. When the writer takes the
waiting batches, each takes with it what its reader received since handing it over (the reader's
``More``: in stream order, within the reader's batch size), so a report that reaches a partition
whose batch waits is stored in the next transaction, not the one after it. The batch is still one
reader's unit: acked after its commit, kept whole and handed over again when it fails, so nothing
later of its partition is stored before it.

Taking over a partition (``acquire``): the fence is claimed in its own transaction, then the alarm
states of exactly that partition's things are loaded from the database, leaving the other
partitions' states alone; their windows start empty (fleet statistics are fleet-wide: every
detect node's ended windows are shared, cluster/fleet_statistics.py). Giving one up
(``release``) forgets those things' states.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy.engine import Connection

from iotdefender.cluster import fencing
from iotdefender.cluster.report_stream import Delivery, More, nothing_more
from iotdefender.pipeline.batch_isolation import store_isolating, together_or_apart
from iotdefender.pipeline.batch_store import EventListener, EventSummary, summaries
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.group_commit import GroupCommit
from iotdefender.pipeline.local_store import store_reports
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.pipeline.report_message import ReportMessage, ReportOutcome, Status, UndecodableReport, decode
from iotdefender.pipeline.transaction_metrics import TransactionObserver, observe, timed
from iotdefender.store import metric_values
from iotdefender.store.availability import StoreUnavailable, is_unavailable

log = structlog.get_logger("iotdefender.partition_store")

INTERNAL_ERROR = "InternalError"  # ingest.report.RejectCode.INTERNAL_ERROR (ingest sits above this layer)
STALE_REPORT_ID = "StaleReportId"  # ingest.report.RejectCode.STALE_REPORT_ID
SERVICE_UNAVAILABLE = "ServiceUnavailable"  # ingest.report.RejectCode.SERVICE_UNAVAILABLE

#: (partition, fencing token, deliveries): one reader's batch.
PartitionBatch = tuple[int, int, Sequence[Delivery]]
#: A batch handed over and not yet taken by the writer: its reader's ``More`` may still add to it.
_Growing = tuple[int, int, list[Delivery]]

#: Told, once per transaction, the outcomes of every batch it answered (each batch's in delivery
#: order): the broker nodes' replies, so that they can go out as one message per broker node.
OutcomeListener = Callable[[list[ReportOutcome]], Awaitable[None]]


async def ignore_outcomes(outcomes: list[ReportOutcome]) -> None:
    """The listener of a node that answers no broker node (tests, tools)."""


def _everything(delivery: Delivery) -> bool:
    return True


@dataclass(frozen=True)
class _Report:
    sequence: int
    message: ReportMessage


@dataclass(frozen=True)
class _Committed:
    stored: frozenset[int]  # the sequences this transaction stored (the others were already committed)
    stale: frozenset[int] = frozenset()  # report ids below their thing's stored one: refused, not stored


class PartitionBatchStore:
    """Stores and evaluates the partitions this node owns; one transaction at a time (the
    detection lock), as the engine's state is this process's."""

    def __init__(self, monitoring: MonitoringIndex, detection: DetectionService, on_events: EventListener,
                 on_outcomes: OutcomeListener = ignore_outcomes, on_transaction: TransactionObserver = observe
                 ) -> None:
        self._monitoring = monitoring
        self._detection = detection
        self._on_events = on_events
        self._on_transaction = on_transaction  # each committed transaction's seconds and reports
        self._on_outcomes = on_outcomes
        self._partition_of = detection.partition_of  # the cluster's: one function for what is read and written
        # Batches handed over by the partitions' readers and not yet taken by the writer (handle).
        self._waiting: list[tuple[_Growing, More, asyncio.Future[list[ReportOutcome]]]] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        # Acquisitions and fence moves of one ownership round, each group in as few transactions as
        # arrive while one runs (pipeline/group_commit.py).
        self._acquisitions: GroupCommit[tuple[int, int], None] = GroupCommit(self.acquire_many, "partition-acquirer")
        self._moves: GroupCommit[tuple[int, int, int], bool] = GroupCommit(self.retoken_many, "fence-mover")
        self._releases: GroupCommit[int, None] = GroupCommit(self.release_many, "partition-releaser")

    # -- for DetectConsumer ----------------------------------------------------------------------
    async def handle(self, partition: int, token: int, deliveries: Sequence[Delivery],
                     more: More = nothing_more) -> None:
        """The ``BatchHandler``: store (with the other partitions' batches waiting now, and what
        ``more`` brought until the writer took it), then tell the outcomes; raises (the batch is
        not acked) when fenced or when the database is unavailable."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[ReportOutcome]] = loop.create_future()
        self._waiting.append(((partition, token, list(deliveries)), more, future))
        if self._wake is None or self._writer is None or self._writer.done():
            # A new writer gets a new event: one that a writer of an earlier event loop waited on
            # is bound to that loop (asyncio.Event, Python 3.10+) and fails in this one.
            self._wake = asyncio.Event()
            self._writer = asyncio.create_task(self._write_loop(), name="partition-writer")
        self._wake.set()
        await future

    async def _write_loop(self) -> None:
        """One ``store_many`` at a time, of every partition batch waiting when it starts; then the
        outcomes of all the batches it answered are told at once (before their readers ack), so a
        transaction over 40 partitions sends one message per broker node, not one per partition
        and broker node (core-NATS messages were a share of the cluster's CPU per report)."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            taken, self._waiting = self._waiting, []
            if not taken:
                continue
            for (partition, _, deliveries), more, _ in taken:
                # What each partition's reader received since it handed its batch over joins it
                # now, as the transaction starts: it used to wait for the next one (the reader
                # hands a batch once, then waits for its commit). In stream order, after the
                # batch, within the reader's batch size; acked, kept or nakked with the batch.
                try:
                    deliveries.extend(more(_everything))
                except Exception:  # a defect of the reader's: its batch goes as handed, the writer on
                    log.exception("partition_batch_not_extended", partition=partition)
            try:
                results = await asyncio.to_thread(self.store_many, [batch for batch, _, _ in taken])
            except Exception as error:  # store_many answers each batch; this would be a defect of ours
                log.exception("partition_writer_failed", batches=len(taken))
                results = [error] * len(taken)
            answered = [outcome for result in results if not isinstance(result, BaseException) for outcome in result]
            answered += [outcome for (batch, _, _), result in zip(taken, results)
                         if isinstance(result, BaseException) and is_unavailable(result)
                         for outcome in self._unavailable(batch)]
            if answered:
                try:
                    await self._on_outcomes(answered)
                except Exception:  # committed already: an answer lost costs the device a retry, not the ack
                    log.exception("partition_outcomes_not_told", outcomes=len(answered))
            for (_, _, future), result in zip(taken, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            # Let the readers just answered run before taking the next batches: each acks and hands
            # over what its pull request delivered meanwhile without awaiting anything else (nor
            # does ``handle``), so one turn of the loop is enough. Without it the writer took only
            # the batches of the other partitions (``Event.wait`` returns at once when set) and
            # these waited one transaction more (at 1,000 reports/s most partitions are in every
            # transaction, bench/README.md, cluster latency).
            await asyncio.sleep(0)

    async def on_acquired(self, partition: int, token: int) -> None:
        """``acquire`` with the other acquisitions of the round: one claim transaction and one
        read of the alarm states and windows for all (a read of the trailing hour per partition
        took 0.2-2.2 s each at 20,000 things, bench/README.md "Restart: refilling the windows")."""
        await self._acquisitions((partition, token))

    async def on_released(self, partition: int) -> None:
        """``release`` with the other releases of the round, in one pass over the things held."""
        await self._releases(partition)

    async def on_retoken(self, partition: int, old: int, new: int) -> bool:
        """``retoken_many`` with the other moves of the renewal round (after a leases bucket's
        election a node re-creates every lease that expired meanwhile, each needing its fence moved
        before its reader goes on); the database down fails them all, and each caller releases
        its partition."""
        return await self._moves((partition, old, new))

    # -- the work --------------------------------------------------------------------------------
    def acquire(self, partition: int, token: int) -> None:
        """Claim the partition's fence with ``token``, then load its things' alarm states and windows."""
        (refused,) = self.acquire_many([(partition, token)])
        if refused is not None:
            raise refused

    def acquire_many(self, acquisitions: Sequence[tuple[int, int]]) -> list[fencing.Fenced | None]:
        """Claim each (partition, token)'s fence in one transaction, in partition order, then load
        the alarm states and windows of the claimed partitions' things in one read. Per
        acquisition: None, or ``Fenced`` if a newer owner had claimed its partition already."""
        refused: dict[tuple[int, int], fencing.Fenced] = {}

        def claim_all(conn: Connection) -> set[int]:
            claimed: set[int] = set()
            refused.clear()
            for partition, token in sorted(acquisitions):
                if fencing.claim(conn, partition, token):
                    claimed.add(partition)
                else:
                    refused[(partition, token)] = fencing.Fenced(
                        f"partition {partition}: claimed past token {token} by a newer owner")
            return claimed

        settled = self._detection.take_over(claim_all)
        if settled:
            self._on_events(summaries(settled))
        return [refused.get(acquisition) for acquisition in acquisitions]

    def retoken_many(self, moves: Sequence[tuple[int, int, int]]) -> list[bool]:
        """Leases expired while NATS elected a leader and this node created them again: move each
        (partition, old, new) fence from ``old`` to ``new`` if nobody claimed it meanwhile (then
        nobody committed for the partition and its states in memory are current: nothing is
        reloaded); False for one to release. One transaction, the rows locked in partition order
        as ``fencing.check_all`` locks them (no cycle with a batch's transaction)."""
        def move_all(conn: Connection) -> dict[int, bool]:
            return {i: fencing.move(conn, *moves[i]) for i in sorted(range(len(moves)), key=lambda i: moves[i][0])}

        moved = self._detection.rewrite(move_all)
        return [moved[i] for i in range(len(moves))]

    def release(self, partition: int) -> None:
        """Forget the partition's things: their next owner loads them from the database."""
        self.release_many([partition])

    def release_many(self, partitions: Sequence[int]) -> list[None]:
        """Forget the things of every partition given: one pass over the things held, under the
        detection lock. A pass per partition hashed every held thing's name once per partition
        (~1 µs each): a node giving 32 partitions away with 100k devices' windows held the lock,
        and so every partition's batches, for ~2 s."""
        gone = frozenset(partitions)
        self._detection.give_up(lambda thing: self._partition_of(thing) in gone)
        return [None] * len(partitions)

    def sweep(self, now: float, owned: Mapping[int, int]) -> list[EventSummary]:
        """The invalidation sweep over the things of the partitions this node owns ({partition:
        token}), their fences checked in the sweep's transaction: alarm states live in the owner's
        memory, and a node that lost a partition meanwhile must not invalidate its alarms
        (``Fenced``: nothing is stored, the next sweep goes on with what is still owned)."""
        if not owned:
            return []

        def fenced(conn: Connection) -> None:
            fencing.check_all(conn, owned)

        pending = self._detection.sweep(now, lambda thing: self._partition_of(thing) in owned, fenced)
        events = summaries(pending.events) if pending is not None else []
        self._on_events(events)
        return events

    def store_many(self, batches: Sequence[PartitionBatch]) -> list[list[ReportOutcome] | Exception]:
        """Several partitions' batches in one transaction; each batch's outcomes, or what it raises.

        A transaction per partition batch serialised 32 partitions' small batches behind one
        detection lock and one commit each (measured: p50 about 0.4 s from report to answer at 200
        reports/s over two nodes); one transaction for all that are waiting pays one commit. If
        that transaction fails for a reason of its own (a partition fenced, a report the database
        refuses), each batch is stored on its own as before, so one
        partition's failure is only its own. Not when the database is unavailable: that is no
        batch's fault, and trying each apart cost every batch one more connection timeout (with
        packets dropped, 4 batches held a node's partitions 25 s before it could let them go);
        every batch then fails at once, as does each one still waiting after an outage apart."""
        # One partition twice (re-acquired while its old reader's batch waited: the same
        # deliveries under two tokens) is stored apart, each batch under its own token: together,
        # one fence check would stand for both and the shared deliveries be stored twice.
        distinct = len({partition for partition, _, _ in batches}) == len(batches)
        return together_or_apart(
            batches, self._store_together if distinct else None, lambda batch: self.store(*batch),
            on_apart=lambda error: log.info("partition_batches_apart", batches=len(batches),
                                            error=f"{type(error).__name__}: {error}"))

    def _store_together(self, batches: Sequence[PartitionBatch]) -> list[list[ReportOutcome]]:
        read = [(partition, token, deliveries, *self._read(partition, deliveries))
                for partition, token, deliveries in batches]
        parts = [(partition, token, reports) for partition, token, _, _, reports in read if reports]
        committed = self._commit(parts) if parts else _Committed(frozenset())
        return [self._answers(partition, deliveries, unread, reports, [committed], range(len(reports)), {})
                for partition, _, deliveries, unread, reports in read]

    def store(self, partition: int, token: int, deliveries: Sequence[Delivery]) -> list[ReportOutcome]:
        """One outcome per delivery, in order (module docstring)."""
        unread, reports = self._read(partition, deliveries)
        if not reports:
            return self._answers(partition, deliveries, unread, reports, [], [], {})
        isolated = store_isolating(lambda part: self._commit([(partition, token, part)]), reports,
                                   source="cluster", fatal=(fencing.Fenced,))
        if isolated.outage is not None:
            raise StoreUnavailable.caused_by(isolated.outage) from isolated.outage
        return self._answers(partition, deliveries, unread, reports, isolated.results, isolated.stored,
                             isolated.failed)

    def _read(self, partition: int, deliveries: Sequence[Delivery]) -> tuple[dict[int, ReportOutcome], list[_Report]]:
        """The reports of the deliveries, and the outcomes of those that are not reports (poison)."""
        unread: dict[int, ReportOutcome] = {}
        reports: list[_Report] = []
        for delivery in deliveries:
            try:
                reports.append(_Report(delivery.stream_sequence, self._decode(partition, delivery)))
            except UndecodableReport as error:
                log.error("report_message_undecodable", partition=partition, sequence=delivery.stream_sequence,
                          thing=delivery.thing_name, error=str(error))
                unread[delivery.stream_sequence] = ReportOutcome(
                    delivery.stream_sequence, delivery.thing_name, Status.REJECTED, report_id=delivery.report_id,
                    reply_to=delivery.reply_to, error_code=INTERNAL_ERROR,
                    error_message=f"The report could not be read by the detect node ({error})")
        return unread, reports

    @staticmethod
    def _answers(partition: int, deliveries: Sequence[Delivery], unread: dict[int, ReportOutcome],
                 reports: Sequence[_Report], results: Sequence[_Committed], stored_indices: Iterable[int],
                 failed: Mapping[int, BaseException]) -> list[ReportOutcome]:
        """One outcome per delivery, in delivery order, from what the transactions did."""
        outcomes = dict(unread)
        stored: set[int] = set()
        stale: set[int] = set()
        for result in results:
            stored |= result.stored
            stale |= result.stale
        for index in stored_indices:
            report = reports[index]
            if report.sequence in stale:
                outcomes[report.sequence] = _outcome(
                    report, Status.REJECTED, f"Report id {report.message.report_id} is lower than the last "
                    f"accepted id of thing {report.message.thing}; report ids must increase", STALE_REPORT_ID)
                continue
            outcomes[report.sequence] = _outcome(report, Status.STORED if report.sequence in stored
                                                 else Status.DUPLICATE)
        for index, failure in failed.items():
            report = reports[index]
            log.error("report_not_stored", partition=partition, thing=report.message.thing,
                      report_id=report.message.report_id, error=f"{type(failure).__name__}: {failure}")
            outcomes[report.sequence] = _outcome(
                report, Status.REJECTED, f"The report could not be stored ({failure}); the other reports were")
        return [outcomes[delivery.stream_sequence] for delivery in deliveries]

    def _unavailable(self, batch: PartitionBatch) -> list[ReportOutcome]:
        """The outcomes of a batch the database did not take (it is down, frozen, or its COMMIT
        went unanswered): its devices are told ``ServiceUnavailable`` now, as the single box tells
        them, instead of when their broker node's outcome wait (10 s) runs out. The batch is not
        acked and is read again; a resend of one of its reports is stored once (each thing's
        report id decides) and answered ``accepted``. A rejection, not a new status: a broker node
        of the previous release answers it as well (rolling upgrades)."""
        partition, _, deliveries = batch
        outcomes = []
        for delivery in deliveries:
            try:
                message = self._decode(partition, delivery)
            except UndecodableReport:
                continue  # answered as poison when the batch is read again
            outcomes.append(ReportOutcome(delivery.stream_sequence, message.thing, Status.REJECTED, message.report_id,
                                          message.encoding, message.reply_to, SERVICE_UNAVAILABLE,
                                          "The report is not confirmed stored: the database did not answer; "
                                          "send it again with the same report id"))
        return outcomes

    def _decode(self, partition: int, delivery: Delivery) -> ReportMessage:
        message = decode(delivery.payload)
        if self._partition_of(message.thing) != partition:
            # Evaluating it here would give its thing two evaluators (its own partition's owner too).
            raise UndecodableReport(f"thing {message.thing!r} does not belong to partition {partition}")
        return message

    def _commit(self, parts: Sequence[tuple[int, int, Sequence[_Report]]]) -> _Committed:
        """One transaction over one or more partitions' reports ((partition, token, reports)): each
        partition fenced, what is committed skipped, the rest stored and evaluated. Fences are
        locked in partition order (two nodes never wait on each other in a cycle)."""
        parts = sorted(parts, key=lambda part: part[0])
        self._monitoring.prime([report.message.thing for _, _, reports in parts for report in reports])
        reports = sum(len(part_reports) for _, _, part_reports in parts)
        with timed(reports, self._on_transaction), self._detection.transaction() as run:
            fencing.check_all(run.conn, {partition: token for partition, token, _ in parts})
            fresh, stale = _in_report_order(run.conn, [report for _, _, reports in parts for report in reports])
            marks = store_reports(run, self._monitoring, [(r.message.thing, r.message.datapoints,
                                                           r.message.received_at, r.message.report_id)
                                                          for r in fresh])
            # Should the COMMIT go unanswered: it happened if a thing's stored report id reached its
            # mark (no other node writes these things: their partitions are fenced to this one).
            run.commit_check = lambda conn: metric_values.reports_stored(conn, marks) if marks else True
        self._on_events(summaries(run.settled + run.events))
        return _Committed(frozenset(report.sequence for report in fresh), stale)


def _in_report_order(conn: Connection, reports: list[_Report]) -> tuple[list[_Report], frozenset[int]]:
    """The reports to store, and the sequences of those to refuse as stale.

    JetStream drops a resent report only within its duplicate window (120 s); a resend after it
    (a device retrying for long, or one that moved to a broker node that had not seen its reports)
    reaches this node as a new message. Report ids only grow per thing, so one at or below the
    thing's stored id (``thing_report_state``, as ``LocalBatchStore`` settles an unconfirmed commit)
    was stored already: the same id is not stored again and counts as stored (``DUPLICATE``), a
    lower one is refused ``StaleReportId`` as on the single box. Also within the batch."""
    if not reports:
        return reports, frozenset()
    last = {thing: state[0] for thing, state in
            metric_values.load_report_states(conn, {r.message.thing for r in reports}).items()}
    kept: list[_Report] = []
    stale: set[int] = set()
    for report in reports:
        thing, report_id = report.message.thing, report.message.report_id
        before = last.get(thing)
        if before is not None and report_id <= before:
            if report_id < before:
                stale.add(report.sequence)
            continue
        last[thing] = report_id
        kept.append(report)
    return kept, frozenset(stale)


def _outcome(report: _Report, status: Status, error: str | None = None, code: str = INTERNAL_ERROR) -> ReportOutcome:
    message = report.message
    return ReportOutcome(report.sequence, message.thing, status, message.report_id, message.encoding,
                         message.reply_to, code if error is not None else None, error)
