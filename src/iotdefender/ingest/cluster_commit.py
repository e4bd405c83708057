"""A broker node's ``ReportCommitter`` (ingest/commit.py): a report is committed when its detect node says so.

Each accepted report is published to its thing's partition (``ReportPublisher``, ``Nats-Msg-Id =
thing/report id``) carrying this node's reply subject; the device is answered from the detect
node's ``ReportOutcome`` for it (pipeline/report_replies.py): ``stored``/``duplicate`` -> accepted, ``rejected`` ->
rejected with the detect node's code. Never ``accepted`` without that outcome:

- no PubAck (NATS unreachable, no quorum, a timeout): ``ServiceUnavailable`` (retryable); the
  report may or may not be in the stream, and the device's resend carries the same message id;
- no outcome within ``outcome_patience_s`` (2 s; normally it takes milliseconds): the outcome
  may have been lost on its way (core NATS, at most once: the detect node's or this node's server
  died), so PostgreSQL's ``thing_report_state`` is polled as well, as for a resend below; a stored
  report id at or past this one answers ``accepted``. Before, such a device waited the whole
  outcome timeout, was told ``ServiceUnavailable`` and resent (in test_cluster_nats3, most of the
  6-16 s until every device was accepted again after a NATS server's death);
- no outcome and nothing stored within ``outcome_timeout_s`` (its partition is being taken over,
  the database is down so the detect node retries): ``ServiceUnavailable`` as well;
- a resend whose publish JetStream answers ``duplicate: true`` (the first publish's answer was
  lost or timed out, on this node or on the node the device was connected to before): the first
  publish's outcome, if it reaches this node (its waiter is keyed by thing and report id, so a late
  outcome of this node's earlier publish is caught), else PostgreSQL's ``thing_report_state`` is
  polled: a stored report id at or past this one means the report was committed (report ids
  only grow per thing, as ``LocalBatchStore`` settles an unconfirmed commit). Neither within
  ``outcome_patience_s``: the report is published once more under a message id of its own
  (``Nats-Msg-Id = thing/report id/again-…``) and answered from that copy's outcome. The first
  copy's outcome may be gone for good: it was a rejection (``InternalError``, ``StaleReportId``)
  answered to a connection the device had left, and nothing is stored for it, so every resend
  within JetStream's duplicate window (120 s) was answered ``ServiceUnavailable`` (11 devices for
  over 2 minutes in the rolling-upgrade trial, docs/cluster.md). The copy is safe: the detect node
  decides by each thing's stored report id, not by the message id, so it stores the report once
  (a copy of a stored report is answered ``duplicate``, i.e. accepted). Still nothing by
  ``outcome_timeout_s``: ``ServiceUnavailable`` again, and the device retries.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from prometheus_client import Counter
from sqlalchemy.engine import Engine

from iotdefender.ingest.committed_watch import CommittedWatch, stored_report_ids
from iotdefender.pipeline.report_replies import OutcomeKey, OutcomeWaiters
from iotdefender.cluster.report_stream import ReportPublisher, report_message_id
from iotdefender.ingest.commit import AcceptedReport
from iotdefender.ingest.report import RejectCode, ReportRejected
from iotdefender.pipeline.batch_isolation import Isolated
from iotdefender.pipeline.report_message import VERSION, ReportMessage, ReportOutcome, encode

log = structlog.get_logger("iotdefender.cluster")

UNANSWERED = Counter("iotdefender_cluster_reports_unconfirmed",
                     "Reports answered ServiceUnavailable: no PubAck, or no outcome in time", ["reason"])
SETTLED = Counter("iotdefender_cluster_duplicates_settled",
                  "Reports answered after the usual wait (a resend JetStream already held, or an outcome "
                  "that did not come in time), by how their answer was found", ["how"])


class JetStreamCommitter:
    """Publishes each report and waits for its outcome; reports of one batch go concurrently.

    Ingest answers a batch once every report of it is settled, and each report here settles on its
    own (its partition's detect node, its own transaction), so ingest is asked for batches of one
    report and many of them in flight: a report is answered when *its* outcome arrives, not when the
    slowest of the reports batched with it does, and a new report never waits for a free batch
    slot behind slow ones. (Measured with batches of up to 1,000 and 8 in flight: at 500 reports/s
    the reports waited 33 ms (p50) / 325 ms (p99) in ingest before being published, and the
    answer of each waited for the slowest outcome of its batch; bench/README.md, cluster.)
    The depth is bounded by ingest's queue limit in any case: it only adds concurrency.
    """

    def __init__(self, publisher: ReportPublisher, waiters: OutcomeWaiters, reply_to: str, engine: Engine,
                 outcome_timeout_s: float = 10.0, settle_poll_s: float = 0.2, pipeline_depth: int = 4096,
                 batch_max: int = 1, outcome_patience_s: float = 2.0,
                 message_version: Callable[[], int] = lambda: VERSION) -> None:
        self._publisher, self._waiters, self._reply_to = publisher, waiters, reply_to
        # The version every live detect node reads (report_message.version_to_write over SharedSettings.announced): rolling upgrades.
        self._message_version = message_version
        self._timeout_s = outcome_timeout_s
        self._patience_s = min(outcome_patience_s, outcome_timeout_s)
        self._committed = CommittedWatch(stored_report_ids(engine), settle_poll_s)
        # A thing is in one batch in flight at a time (ingest), so depth only adds concurrency.
        self.pipeline_depth = pipeline_depth
        self.batch_max = batch_max
        self.commits_here = False  # outcomes are the detect nodes' transactions, not this node's database

    async def commit(self, batch: Sequence[AcceptedReport]) -> Isolated[Any]:
        """Things concurrently; one thing's reports one after the other, so they enter its
        partition in report order (concurrent publishes need not reach JetStream in call order)."""
        by_thing: dict[str, list[int]] = {}
        for index, item in enumerate(batch):
            by_thing.setdefault(item.thing, []).append(index)
        answers: dict[int, ReportRejected | None] = {}

        async def in_order(indices: list[int]) -> None:
            for index in indices:
                answers[index] = await self._one(batch[index])

        await asyncio.gather(*(in_order(indices) for indices in by_thing.values()))
        outcome: Isolated[Any] = Isolated()
        for index in range(len(batch)):
            rejection = answers[index]
            if rejection is None:
                outcome.stored.append(index)
            else:
                outcome.failed[index] = rejection
        return outcome

    async def _one(self, item: AcceptedReport) -> ReportRejected | None:
        """None when committed, else the device's rejection."""
        report_id = item.report.report_id
        key = (item.thing, report_id)
        future, earlier = self._waiters.expect(key)
        try:
            message = ReportMessage(item.thing, item.report.datapoints, item.received_at, report_id,
                                    item.encoding, self._reply_to)  # type: ignore[arg-type]
            try:
                ack = await self._publisher.publish(item.thing, encode(message, self._message_version()),
                                                    report_message_id(*key), self._reply_to, report_id)
            except Exception as error:  # nats-py's timeouts and JetStream errors: not stored (as far as we know)
                UNANSWERED.labels("no-puback").inc()
                log.warning("cluster.publish_failed", thing=item.thing, report_id=report_id, error=repr(error))
                return _unavailable(report_id, "the cluster did not confirm storing it")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._timeout_s
            if ack.duplicate and not earlier:
                settled, answer = await self._settled(key, future, min(deadline, loop.time() + self._patience_s))
                if settled:
                    return answer
                try:  # the first copy's outcome may be gone for good (module docstring): a copy of its own
                    await self._publisher.publish(item.thing, encode(message, self._message_version()),
                                                  f"{report_message_id(*key)}/again-{uuid.uuid4().hex[:12]}",
                                                  self._reply_to, report_id)
                except Exception as error:
                    log.warning("cluster.publish_failed", thing=item.thing, report_id=report_id, error=repr(error))
                SETTLED.labels("published-again").inc()
                return await self._settle(key, future, deadline, "duplicate-unsettled",
                                          "an earlier copy of it is not confirmed committed yet")
            try:
                return _answer(await asyncio.wait_for(asyncio.shield(future), self._patience_s))
            except TimeoutError:  # its outcome may be lost: PostgreSQL knows whether it was committed
                return await self._settle(key, future, deadline, "no-outcome",
                                          f"its commit was not confirmed within {self._timeout_s:g} s")
        finally:
            if not earlier:
                self._waiters.forget(key, future)

    async def _settle(self, key: OutcomeKey, future: asyncio.Future[ReportOutcome], deadline: float,
                      unsettled: str, why: str) -> ReportRejected | None:
        """A report whose outcome has not come (a resend JetStream already holds, or one waited
        for longer than usual): its outcome if it comes here, else PostgreSQL's word that it was
        committed (``CommittedWatch``), until ``deadline``."""
        settled, answer = await self._settled(key, future, deadline)
        if settled:
            return answer
        UNANSWERED.labels(unsettled).inc()
        return _unavailable(key[1], why)

    async def _settled(self, key: OutcomeKey, future: asyncio.Future[ReportOutcome], deadline: float
                       ) -> tuple[bool, ReportRejected | None]:
        """(True, the device's answer) once the outcome comes or PostgreSQL shows the report
        committed, (False, None) if neither by ``deadline``."""
        committed = self._committed.watch(key)
        try:
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            either: list[asyncio.Future[Any]] = [future, committed]
            await asyncio.wait(either, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._committed.forget(key, committed)
        if future.done():
            SETTLED.labels("outcome").inc()
            return True, _answer(future.result())
        if committed.done():
            SETTLED.labels("database").inc()
            return True, None
        return False, None


def _answer(outcome: ReportOutcome) -> ReportRejected | None:
    if outcome.accepted:
        return None
    try:
        code = RejectCode(outcome.error_code)
    except ValueError:
        code = RejectCode.INTERNAL_ERROR
    return ReportRejected(code, outcome.error_message or "The report was not stored", outcome.report_id)


def _unavailable(report_id: int, why: str) -> ReportRejected:
    # "Not confirmed", not "not stored": the node cannot know (the report may be committed and its
    # outcome lost); a resend with the same report id is recognised and answered accepted.
    return ReportRejected(RejectCode.SERVICE_UNAVAILABLE, f"The report is not confirmed stored: {why}; "
                          "send it again with the same report id",
                          report_id)
