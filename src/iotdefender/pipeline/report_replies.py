"""The detect node's answers back to the broker nodes: one core-NATS message per reply subject per transaction.

A broker node publishes each report with its own reply subject (``iotdefender.replies.<node id>``,
``report_message.ReportMessage.reply_to``); the partition's detect node, once the batch committed,
sends the ``ReportOutcome``s of every batch the transaction answered, grouped by that subject
(msgpack, a list). Core NATS, not JetStream: an outcome is only useful to the node the device is connected to, while it waits; one
that is lost (the broker node restarted, the connection dropped) leaves that node to time out and
answer ``ServiceUnavailable``, and the device's resend is settled from PostgreSQL
(ingest/cluster_commit.py). Nothing accepted depends on this message arriving.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from iotdefender.message_size import fitting, payload_limit
from iotdefender.pipeline.report_message import ReportOutcome

log = structlog.get_logger("iotdefender.cluster")

REPLY_PREFIX = "iotdefender.replies"

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[ReportOutcome])

OutcomeKey = tuple[str, int]  # (thing, report id): unique per thing, the same on every node


def reply_subject(node_id: str) -> str:
    return f"{REPLY_PREFIX}.{node_id}"


def encode_outcomes(outcomes: Sequence[ReportOutcome]) -> bytes:
    return _encoder.encode(outcomes)


def decode_outcomes(payload: bytes) -> list[ReportOutcome]:
    return _decoder.decode(payload)


class OutcomeSender:
    """The detect node's ``OutcomeListener`` (partition_store.py): a transaction's outcomes to their
    broker nodes, one message per broker node (reply subject)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc

    async def __call__(self, outcomes: list[ReportOutcome]) -> None:
        by_subject: dict[str, list[ReportOutcome]] = defaultdict(list)
        for outcome in outcomes:
            if outcome.reply_to:  # unknown for a poison message without the reply headers: no one can be told
                by_subject[outcome.reply_to].append(outcome)
        # A transaction's outcomes for one broker node can pass a NATS message (~6,500 of them in
        # 1 MB: a detect node catching up takes up to 256 reports a partition into a transaction),
        # and nats-py refuses the whole message: its devices then waited for the broker node's
        # poll of PostgreSQL. Sent in as many messages as they need.
        limit = payload_limit(self._nc.max_payload)
        for subject, batch in by_subject.items():
            for piece, payload in fitting(batch, encode_outcomes, limit):
                try:
                    await self._nc.publish(subject, payload)
                except Exception as error:  # the batch is committed: a lost answer only costs the device a retry
                    log.warning("cluster.outcomes_not_sent", subject=subject, outcomes=len(piece), error=repr(error))


class OutcomeWaiters:
    """A broker node's reports waiting for their detect node's outcome, by (thing, report id)."""

    def __init__(self) -> None:
        self._waiting: dict[OutcomeKey, asyncio.Future[ReportOutcome]] = {}

    def expect(self, key: OutcomeKey) -> tuple[asyncio.Future[ReportOutcome], bool]:
        """The future of ``key``'s outcome, and whether it was already awaited (an earlier publish)."""
        found = self._waiting.get(key)
        if found is not None and not found.done():
            return found, True
        future: asyncio.Future[ReportOutcome] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        return future, False

    def forget(self, key: OutcomeKey, future: asyncio.Future[ReportOutcome]) -> None:
        if self._waiting.get(key) is future:
            del self._waiting[key]

    def resolve(self, outcomes: list[ReportOutcome]) -> None:
        for outcome in outcomes:
            if outcome.report_id is None:
                continue
            future = self._waiting.pop((outcome.thing, outcome.report_id), None)
            if future is not None and not future.done():
                future.set_result(outcome)

    async def subscribe(self, nc: Client, subject: str) -> None:
        async def received(msg: Msg) -> None:
            try:
                self.resolve(decode_outcomes(msg.data))
            except msgspec.DecodeError as error:
                log.error("cluster.outcomes_undecodable", subject=subject, error=str(error))

        await nc.subscribe(subject, cb=received)

    def __len__(self) -> int:
        return len(self._waiting)
