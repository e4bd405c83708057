"""The report pipeline: validate, throttle, store durably in batches, then answer the device.

A report is answered ``accepted`` only after the transaction holding its datapoints and the
thing's new report state has committed, so an acknowledged report survives ``kill -9``.
Rejections are answered at once, counted per reason (Prometheus) and logged with the thing.

Every report gets exactly one answer, whatever happens (docs/ingest-rejections.md):
- a report that one batch's transaction cannot take is isolated (batch_isolation) and rejected
  ``InternalError`` with the store's error; the other reports of its batch are stored;
- while the database is unreachable, reports are rejected ``ServiceUnavailable`` (retryable) and
  the outage is logged once (store/availability);
- when more than ``queue_limit`` reports wait to be stored and answered, new ones are rejected
  ``ServiceOverloaded`` (retryable) instead of the queue, and the memory, growing without bound;
- any other exception met while handling one report becomes an ``InternalError`` rejection
  logged with its traceback: ``submit`` never raises into the broker adapter, whose MQTT session
  (or the service's own client, with an external broker) an exception would end.

Ordering and idempotence per thing: see ingest/order.py; a report that was not stored never
advances its thing's order. A copy of a report that is still waiting to be stored and answered (a
QoS 1 resend after a reconnection) is answered with the first copy's outcome when it comes, not
refused ``DuplicateReportId``: before, the device got ``rejected`` for the resend and ``accepted``
for the first copy a moment later, on the single box and on a cluster broker node alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import structlog
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.engine import Engine

from iotdefender.ingest.commit import AcceptedReport, ReportCommitter, committer_of
from iotdefender.ingest.order import ReportOrder
from iotdefender.ingest.replies import bounded, reply_payload, reply_topic
from iotdefender.ingest.report import (
    RejectCode,
    ReportRejected,
    check_thing_name,
    parse_report,
    report_id_hint,
)
from iotdefender.log_limits import LimitedLog
from iotdefender.pipeline.batch_isolation import Isolated
from iotdefender.pipeline.batch_store import BATCH_MAX, BatchStore
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.store import metric_values
from iotdefender.store.availability import DatabaseHealth, is_unavailable

log = structlog.get_logger("iotdefender.ingest")

REPORTS = Counter("iotdefender_reports", "Device metrics reports by outcome", ["outcome"])
REJECTIONS = Counter("iotdefender_report_rejections", "Rejected device metrics reports by reason", ["reason"])
# A flood of rejections (one device's burst, a full queue) is a few lines and a summary, not a line each.
REJECTED_LOG = LimitedLog(log, "report_rejected", "iotdefender_report_rejections_total")
QUEUED = Gauge("iotdefender_ingest_queue_reports", "Reports accepted for storage and not yet answered")
QUEUE_LIMIT = Gauge("iotdefender_ingest_queue_limit", "Reports that may wait; beyond it: ServiceOverloaded")
# What a device waits: from the broker's receipt of its report (the plugin's stamp) to the
# publication of the answer; on a cluster broker node that includes the detect node's commit.
ANSWER_SECONDS = Histogram("iotdefender_report_answer_seconds",
                           "Seconds from a report's receipt by the broker to its reply's publication, by outcome",
                           ["outcome"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
# Bound once: a label lookup per report would allocate on the hot path.
_ANSWERED_ACCEPTED = ANSWER_SECONDS.labels("accepted")
_ANSWERED_REJECTED = ANSWER_SECONDS.labels("rejected")
_REPORTS_ACCEPTED = REPORTS.labels("accepted")
_REPORTS_REJECTED = REPORTS.labels("rejected")

Publisher = Callable[[str, bytes], None]  # queues a PUBLISH; does not wait for it

_BATCH_WAIT_S = 0.002
DEFAULT_QUEUE_LIMIT = 10 * BATCH_MAX


#: Copies of one report held for the first copy's answer (paho resends once per reconnection).
MAX_HELD_COPIES = 4

class IngestService:
    def __init__(self, engine: Engine, monitoring: MonitoringIndex, reports: BatchStore | ReportCommitter,
                 publish: Publisher,
                 report_min_interval: float, clock: Callable[[], float] = time.time,
                 queue_limit: int = DEFAULT_QUEUE_LIMIT, health: DatabaseHealth | None = None) -> None:
        self._engine = engine
        self._monitoring = monitoring
        self._batches = committer_of(reports)  # storage and detection of each batch (ingest/commit.py)
        self._publish = publish
        self._min_interval = report_min_interval
        self._clock = clock
        self._order = ReportOrder(report_min_interval)
        self._queue: asyncio.Queue[AcceptedReport] = asyncio.Queue()
        self._queue_limit = queue_limit
        self._outstanding = 0  # queued, being stored, or waiting for their replies
        # Read when /metrics is scraped: two locked sets of the gauge per report were a visible
        # share of the event loop at thousands of reports a second (py-spy --gil).
        QUEUED.set_function(lambda: self._outstanding)
        self._health = health if health is not None else DatabaseHealth.of(engine)
        self._writer: asyncio.Task[None] | None = None
        self._in_flight_things: set[str] = set()  # things with a report in a batch being stored
        # Copies of a report waiting to be stored, by (thing, report id): (encoding, received) each.
        self._resends: dict[tuple[str, int], list[tuple[str, float]]] = {}
        self._stopping = False
        QUEUE_LIMIT.set(queue_limit)

    async def start(self) -> None:
        def load() -> dict[str, tuple[int, float]]:
            with self._engine.connect() as conn:
                return metric_values.load_report_states(conn)

        self._order = ReportOrder(self._min_interval, await anyio.to_thread.run_sync(load))
        self._stopping = False  # started again after a stop (cluster mode's external-broker intake)
        self._writer = asyncio.create_task(self._write_loop(), name="ingest-writer")

    async def stop(self) -> None:
        """Store and answer every report accepted into the queue, then stop.

        Call it while the broker still runs, so those answers reach their devices; reports that
        arrive meanwhile are answered ``ServiceUnavailable`` (retryable: the device resends to
        another node or after the restart) instead of queueing behind the shutdown."""
        self._stopping = True
        if self._writer is not None:
            await self._queue.join()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    def submit(self, thing_raw: str, encoding: str, payload: bytes, received: float | None = None) -> None:
        """Take one report from the transport; the reply follows asynchronously. Never raises.

        ``received``: when the broker received it, if the broker says (the Mosquitto plugin does).
        The throttle measures the gap between a thing's reports there: measured here, a report
        that waited for this event loop (a busy loop or machine: 125 ms and more seen under load)
        came within the limit of the next one, sent a whole interval later, and the device was
        refused Throttled (5 of 47,000 reports at 0.2 s against a limit of 0.083 s)."""
        now = self._clock()
        arrived = now if received is None else received
        try:
            self._submit(thing_raw, encoding, payload, now, arrived)
        except Exception as error:
            if is_unavailable(error):  # e.g. the monitoring snapshot could not be read: retryable
                self._health.failed(error)
                rejection = ReportRejected(RejectCode.SERVICE_UNAVAILABLE,
                                           "The report was not processed: the database is unavailable; retry later")
            else:  # a defect of ours: this report is rejected, nothing else is hurt
                log.exception("report_failed", thing=thing_raw, encoding=encoding)
                rejection = ReportRejected(RejectCode.INTERNAL_ERROR,
                                           f"The report could not be processed ({type(error).__name__})")
            self._reject(thing_raw, encoding, payload, rejection, now, arrived)

    def _submit(self, thing_raw: str, encoding: str, payload: bytes, now: float, received: float) -> None:
        thing = thing_raw
        try:
            thing = check_thing_name(thing_raw)
            report = parse_report(payload, encoding, self._monitoring.custom_metric_types())
            held = self._resends.get((thing, report.report_id), [])
            if self._order.in_flight(thing, report.report_id) and len(held) < MAX_HELD_COPIES:
                # Answered with the first copy; a device sending it again and again while the
                # database stalls is refused as before beyond a few (they are held in memory).
                self._resends[(thing, report.report_id)] = [*held, (encoding, received)]
                return
            self._order.check(thing, report.report_id, received)
            if self._stopping:
                raise ReportRejected(RejectCode.SERVICE_UNAVAILABLE,
                                     "The service is stopping; retry later", report.report_id)
            if self._outstanding >= self._queue_limit:
                raise ReportRejected(RejectCode.SERVICE_OVERLOADED,
                                     f"The service has {self._outstanding} reports waiting to be stored; "
                                     "retry later", report.report_id)
        except ReportRejected as rejection:
            self._reject(thing, encoding, payload, rejection, now, received)
            return
        self._order.queued(thing, report.report_id, received)
        self._outstanding += 1
        self._queue.put_nowait(AcceptedReport(thing, encoding, report, now, received))

    def _reject(self, thing: str, encoding: str, payload: bytes, rejection: ReportRejected,
                now: float, arrived: float) -> None:
        """Count, log and answer one rejection; a reply that cannot be built or sent is logged.
        ``arrived``: when the broker received the report (the answer's latency is measured from it)."""
        try:
            report_id = rejection.report_id if rejection.report_id is not None else report_id_hint(payload, encoding)
            _REPORTS_REJECTED.inc()
            REJECTIONS.labels(rejection.code.value).inc()
            REJECTED_LOG(rejection.code.value, thing=thing, code=rejection.code.value, reason=bounded(rejection.message),
                         report_id=report_id)
            if rejection.code is RejectCode.INVALID_THING_NAME:
                return  # there is no valid thing topic to answer on
            body = reply_payload(thing, encoding, report_id, int(now * 1000),
                                 (rejection.code.value, rejection.message))
            self._publish(reply_topic(thing, encoding, accepted=False), body)
            _ANSWERED_REJECTED.observe(max(0.0, now - arrived))
        except Exception:
            log.exception("reply_failed", thing=thing)

    async def _write_loop(self) -> None:
        """Batches to the store, up to the store's ``pipeline_depth`` at a time.

        The detection worker stores one batch after another; with only one batch in flight it
        sat idle while the previous batch's result travelled back and the next was formed
        (measured: busy about 40% of the time at 5,000 reports/s). With two in flight, the next
        batch waits in the pipe. Per-thing order is kept by never letting a thing be in two
        batches in flight: a report whose thing is in flight is held, with every later report
        of that thing, until that batch is answered.
        """
        depth = max(1, self._batches.pipeline_depth)
        batch_max = max(1, getattr(self._batches, "batch_max", BATCH_MAX))
        # Batches finish in any order (in cluster mode each report is its own batch, answered when
        # its own outcome comes): a slow one must neither hold a slot once others are done nor
        # keep a held report waiting whose own thing's batch has finished.
        in_flight: set[asyncio.Task[None]] = set()
        finished = asyncio.Event()  # some batch finished since the held reports were last looked at
        held: list[AcceptedReport] = []
        loop = asyncio.get_running_loop()

        def done(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            finished.set()

        while True:
            if len(in_flight) >= depth:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            batch: list[AcceptedReport] = []
            blocked: set[str] = set()
            finished.clear()
            waiting, held = held, []
            for item in waiting:
                self._admit(item, batch, held, blocked)
            if not batch:
                getter = asyncio.ensure_future(self._queue.get())
                if held and in_flight:  # what is held waits for its batch: or a new report comes first
                    any_done = asyncio.ensure_future(finished.wait())
                    done_now, _ = await asyncio.wait((getter, any_done), return_when=asyncio.FIRST_COMPLETED)
                    any_done.cancel()
                    if getter not in done_now:
                        getter.cancel()  # asyncio.Queue.get leaves its item in the queue when cancelled
                        await asyncio.gather(getter, return_exceptions=True)
                        if not getter.cancelled():  # it had taken an item after all: the newest one
                            held.append(getter.result())
                        continue
                self._admit(await getter, batch, held, blocked)
                if not batch:
                    continue
            deadline = loop.time() + _BATCH_WAIT_S
            self._take_queued(batch, held, blocked, batch_max)
            if len(batch) < batch_max:
                # One wait for the rest of the window, then what came meanwhile. It polled the
                # queue every 0.5 ms instead: at 300 reports/s (a batch or two per window) those
                # wake-ups were half of the event loop's CPU (py-spy --gil), and the service's
                # process spent 1.5 ms of CPU a report. A batch that fills within the window now
                # waits for its end (at most 2 ms; a full batch is 1,000 reports).
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                self._take_queued(batch, held, blocked, batch_max)
            things = {item.thing for item in batch}
            self._in_flight_things |= things
            task = asyncio.create_task(self._store(batch, things))
            in_flight.add(task)
            task.add_done_callback(done)

    def _take_queued(self, batch: list[AcceptedReport], held: list[AcceptedReport], blocked: set[str],
                     batch_max: int) -> None:
        """What is queued now, into the batch until it is full (or held behind its thing's batch)."""
        while len(batch) < batch_max:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self._admit(item, batch, held, blocked)

    def _admit(self, item: AcceptedReport, batch: list[AcceptedReport], held: list[AcceptedReport], blocked: set[str]) -> None:
        """Into the batch, or held behind its thing's batch in flight (or its thing's held report)."""
        if item.thing in self._in_flight_things or item.thing in blocked:
            held.append(item)
            blocked.add(item.thing)
        else:
            batch.append(item)

    async def _store(self, batch: list[AcceptedReport], things: set[str]) -> None:
        began = self._health.now()
        try:
            outcome = await self._batches.commit(batch)
        except Exception as error:  # isolation itself failed: answer everyone, lose nothing silently
            log.exception("report_batch_failed", reports=len(batch))
            outcome = Isolated(failed={i: error for i in range(len(batch))})
        finally:
            self._in_flight_things -= things
        if self._batches.commits_here:  # another node's commit says nothing of this node's database
            if outcome.outage is not None:
                self._health.failed(outcome.outage, began)
            elif outcome.stored:
                self._health.succeeded()
        self._answer(batch, outcome)

    def _answer(self, batch: list[AcceptedReport], outcome: Isolated[Any]) -> None:
        stored = set(outcome.stored)
        for index, item in enumerate(batch):
            try:
                self._order.finished(item.thing, item.report.report_id, index in stored)
                copies = [(item.encoding, item.arrived),
                          *self._resends.pop((item.thing, item.report.report_id), ())]
                rejection = None if index in stored else self._not_stored(item, index, outcome)
                for encoding, arrived in copies:
                    self._answer_one(item, encoding, arrived, rejection)
            except Exception:  # a reply that cannot be sent is lost like any QoS 0/1 message in flight
                log.exception("reply_failed", thing=item.thing)
            finally:
                self._outstanding -= 1
                self._queue.task_done()

    def _answer_one(self, item: AcceptedReport, encoding: str, arrived: float,
                    rejection: ReportRejected | None) -> None:
        if rejection is not None:
            self._reject(item.thing, encoding, b"", rejection, self._clock(), arrived)
            return
        _REPORTS_ACCEPTED.inc()
        now = self._clock()
        body = reply_payload(item.thing, encoding, item.report.report_id, int(now * 1000))
        self._publish(reply_topic(item.thing, encoding, accepted=True), body)
        _ANSWERED_ACCEPTED.observe(max(0.0, now - arrived))

    @staticmethod
    def _not_stored(item: AcceptedReport, index: int, outcome: Isolated[Any]) -> ReportRejected:
        error = outcome.failed.get(index)
        if isinstance(error, ReportRejected):  # the committer's own answer (cluster mode: the detect node's)
            return error
        if error is None:
            return ReportRejected(RejectCode.SERVICE_UNAVAILABLE,
                                  "The report was not stored: the database is unavailable; retry later",
                                  item.report.report_id)
        log.error("report_not_stored", thing=item.thing, report_id=item.report.report_id,
                  error=f"{type(error).__name__}: {error}")
        return ReportRejected(RejectCode.INTERNAL_ERROR,
                              f"The report could not be stored ({error}); the other reports were",
                              item.report.report_id)
