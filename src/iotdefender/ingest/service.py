"""The report pipeline: validate, throttle, store durably in batches, then answer the device.

A report is answered ``accepted`` only after the transaction holding its datapoints and the
thing's new report state has committed, so an acknowledged report survives ``kill -9``.
Rejections are answered at once, counted per reason (Prometheus) and logged with the thing.

Ordering and idempotence per thing: the first valid report starts the throttle window
(``report_min_interval``); a report id equal to the last accepted one is a duplicate (a QoS 1
redelivery), a lower one is stale (report ids are "monotonically increasing", reference §4.5).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import structlog
from prometheus_client import Counter
from sqlalchemy.engine import Engine

from iotdefender.ingest.replies import reply_payload, reply_topic
from iotdefender.ingest.report import (
    ParsedReport,
    RejectCode,
    ReportRejected,
    check_thing_name,
    parse_report,
    report_id_hint,
)
from iotdefender.monitoring import MonitoringIndex
from iotdefender.store import metric_values

log = structlog.get_logger("iotdefender.ingest")

REPORTS = Counter("iotdefender_reports", "Device metrics reports by outcome", ["outcome"])
REJECTIONS = Counter("iotdefender_report_rejections", "Rejected device metrics reports by reason", ["reason"])

Publisher = Callable[[str, bytes], Awaitable[None]]

_BATCH_MAX = 1000
_BATCH_WAIT_S = 0.002


@dataclass
class _Accepted:
    thing: str
    encoding: str
    report: ParsedReport
    received_at: float


class IngestService:
    def __init__(self, engine: Engine, monitoring: MonitoringIndex, publish: Publisher,
                 report_min_interval: float, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._monitoring = monitoring
        self._publish = publish
        self._min_interval = report_min_interval
        self._clock = clock
        self._last: dict[str, tuple[int, float]] = {}
        self._queue: asyncio.Queue[_Accepted] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._replying: set[asyncio.Task[None]] = set()  # reply tasks of committed batches
        self.store: Any = None  # batch_store.BatchStore: storage and detection of each batch

    async def start(self) -> None:
        def load() -> dict[str, tuple[int, float]]:
            with self._engine.connect() as conn:
                return metric_values.load_report_states(conn)

        self._last = await anyio.to_thread.run_sync(load)
        self._writer = asyncio.create_task(self._write_loop(), name="ingest-writer")

    async def stop(self) -> None:
        """Write what was accepted into the queue, then stop."""
        if self._writer is not None:
            await self._queue.join()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    async def submit(self, thing_raw: str, encoding: str, payload: bytes) -> None:
        """Take one report from the transport; the reply follows asynchronously."""
        now = self._clock()
        thing = thing_raw
        try:
            thing = check_thing_name(thing_raw)
            report = parse_report(payload, encoding, self._monitoring.custom_metric_types())
            self._check_order(thing, report.report_id, now)
        except ReportRejected as rejection:
            await self._reject(thing, encoding, payload, rejection, now)
            return
        self._last[thing] = (report.report_id, now)
        await self._queue.put(_Accepted(thing, encoding, report, now))

    def _check_order(self, thing: str, report_id: int, now: float) -> None:
        last = self._last.get(thing)
        if last is None:
            return
        last_id, last_at = last
        if report_id == last_id:
            raise ReportRejected(RejectCode.DUPLICATE_REPORT_ID,
                                 f"Report id {report_id} was already accepted for thing {thing}", report_id)
        if report_id < last_id:
            raise ReportRejected(RejectCode.STALE_REPORT_ID,
                                 f"Report id {report_id} is lower than the last accepted id {last_id}; "
                                 "report ids must increase", report_id)
        wait = last_at + self._min_interval - now
        if wait > 0:
            raise ReportRejected(RejectCode.THROTTLED,
                                 f"Thing {thing} may report once every {self._min_interval:g} s; "
                                 f"retry in {wait:.1f} s", report_id)

    async def _reject(self, thing: str, encoding: str, payload: bytes, rejection: ReportRejected,
                      now: float) -> None:
        report_id = rejection.report_id if rejection.report_id is not None else report_id_hint(payload, encoding)
        REPORTS.labels("rejected").inc()
        REJECTIONS.labels(rejection.code.value).inc()
        log.info("report_rejected", thing=thing, code=rejection.code.value, reason=rejection.message,
                 report_id=report_id)
        if rejection.code is RejectCode.INVALID_THING_NAME:
            return  # there is no valid thing topic to answer on
        body = reply_payload(thing, encoding, report_id, int(now * 1000), (rejection.code.value, rejection.message))
        await self._publish(reply_topic(thing, encoding, accepted=False), body)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + _BATCH_WAIT_S
            while len(batch) < _BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        break
                    await asyncio.sleep(min(remaining, 0.0005))
            try:
                await anyio.to_thread.run_sync(self._commit, batch)
            except Exception:
                log.exception("report_batch_failed", reports=len(batch))
                for item in batch:  # not durable: say nothing; the device retries next interval
                    self._last.pop(item.thing, None)
                    self._queue.task_done()
                continue
            # The next batch goes to the store while this one's replies are being sent: the store
            # (a separate process by default) does not sit idle during the replies.
            replies = asyncio.create_task(self._accept(batch))
            self._replying.add(replies)
            replies.add_done_callback(self._replying.discard)

    async def _accept(self, batch: list[_Accepted]) -> None:
        accepted = REPORTS.labels("accepted")
        for item in batch:
            accepted.inc()
            try:
                body = reply_payload(item.thing, item.encoding, item.report.report_id, int(self._clock() * 1000))
                await self._publish(reply_topic(item.thing, item.encoding, accepted=True), body)
            except Exception:  # a reply that cannot be sent is lost like any QoS 0/1 message in flight
                log.exception("reply_failed", thing=item.thing)
            finally:
                self._queue.task_done()

    def _commit(self, batch: list[_Accepted]) -> None:
        """One transaction (BatchStore): retained datapoints, report states, detection results."""
        self.store.store_batch([(i.thing, i.report.datapoints, i.received_at, i.report.report_id) for i in batch])
