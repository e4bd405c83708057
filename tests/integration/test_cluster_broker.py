"""A broker node's ingest in cluster mode against real nats-server (JetStream) and PostgreSQL:
``accepted`` only once the partition's detect node committed the report; ``ServiceUnavailable``
(never ``accepted``) without a PubAck or without an outcome in time; a resend that JetStream
already holds is settled from PostgreSQL."""

from __future__ import annotations

import asyncio
from functools import partial
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.cluster.node import DetectConsumer
from iotdefender.cluster.partitions import partition_of
from iotdefender.pipeline.report_replies import OutcomeSender, OutcomeWaiters, decode_outcomes, reply_subject
from iotdefender.ingest.cluster_commit import JetStreamCommitter
from iotdefender.cluster.report_stream import (REPLY_HEADER, REPORT_ID_HEADER, Delivery, More, ReportPublisher,
                                              report_message_id)
from iotdefender.cluster.topology import Topology, ensure
from iotdefender.ingest.service import IngestService
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.pipeline.partition_store import PartitionBatchStore
from iotdefender.pipeline.report_message import ReportMessage, ReportOutcome, Status, decode, encode
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store import metric_values

pytestmark = pytest.mark.postgres

PARTITIONS = 4


def payload(report_id: int) -> bytes:
    return orjson.dumps({"header": {"report_id": report_id, "version": "1.0"},
                         "metrics": {"listening_tcp_ports": {"ports": [{"port": 22}], "total": 1}}})


def outcome(reply: dict[str, Any]) -> str:
    return reply["status"] if reply["status"] == "ACCEPTED" else reply["statusDetails"]["ErrorCode"]


async def until(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def stop_all(ingest: IngestService, detect: DetectConsumer, *connections: Any) -> None:
    """The end of every test here: ingest, then the detect node, then the NATS connections."""
    await ingest.stop()
    await detect.stop()
    for nc in connections:
        await nc.close()


def database(postgres: Any, tmp_path: Path) -> tuple[Any, Any, MonitoringIndex]:
    """A test's service over a new PostgreSQL database: (api, engine, monitoring)."""
    api = build_api(Settings(data_dir=tmp_path, database_url=postgres.create_database(f"broker{time.monotonic_ns()}")))
    return api, api.context.engine, MonitoringIndex(api.context.engine, api.context.arn(""))


async def connections(jetstream: Any, topology: Topology) -> tuple[Any, Any]:
    """The broker node's and the detect node's NATS connections, the topology in place."""
    broker_nc = await nats.connect(servers=jetstream.urls)
    detect_nc = await nats.connect(servers=jetstream.urls)
    await ensure(broker_nc.jetstream(), topology)
    return broker_nc, detect_nc


async def broker_ingest(broker_nc: Any, topology: Topology, engine: Any, monitoring: MonitoringIndex,
                        publish: Any, **timeouts: float) -> IngestService:
    """Broker node ``broker-1``'s ingest, started: its reports committed through JetStream."""
    waiters = OutcomeWaiters()
    await waiters.subscribe(broker_nc, reply_subject("broker-1"))
    committer = JetStreamCommitter(ReportPublisher(broker_nc.jetstream(), topology, timeout_s=1.0), waiters,
                                   reply_subject("broker-1"), engine, **timeouts)
    ingest = IngestService(engine, monitoring, committer, publish, report_min_interval=0.0)
    await ingest.start()
    return ingest


async def detect_node(api: Any, engine: Any, monitoring: MonitoringIndex, detect_nc: Any,
                      topology: Topology) -> DetectConsumer:
    """Detect node ``detect-1``, started: it commits every partition's reports to PostgreSQL."""
    detection = DetectionService(engine, MonitoringIndex(engine, api.context.arn("")), AlertRoutes(), 172800.0,
                                 partition_of=partial(partition_of, partitions=PARTITIONS))
    store = PartitionBatchStore(monitoring, detection, lambda events: None, OutcomeSender(detect_nc))
    detect = DetectConsumer(detect_nc.jetstream(), topology, "detect-1", store.handle,
                            on_acquired=store.on_acquired, on_released=store.on_released)
    await detect.start()
    return detect


def run(go: Any, engine: Any) -> None:
    try:
        asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        engine.dispose()


def test_a_broker_node_answers_from_the_detect_nodes_commit(jetstream, postgres, tmp_path: Path):
    url = postgres.create_database(f"broker{time.monotonic_ns()}")
    api = build_api(Settings(data_dir=tmp_path, database_url=url))
    engine = api.context.engine
    monitoring = MonitoringIndex(engine, api.context.arn(""))
    replies: list[tuple[str, dict[str, Any], int | None]] = []

    def stored_id(thing: str) -> int | None:
        with engine.connect() as conn:
            found = metric_values.load_report_states(conn, [thing]).get(thing)
        return found[0] if found else None

    def publish(topic: str, body: bytes) -> None:  # what the device hears, and what was committed then
        reply = orjson.loads(body)
        replies.append((topic.split("/", 2)[2], reply, stored_id(reply["thingName"])))

    async def answer(ingest: IngestService, thing: str, report_id: int) -> tuple[str, int | None]:
        count = len(replies)
        ingest.submit(thing, "json", payload(report_id))
        await until(lambda: len(replies) > count)
        _, reply, committed = replies[-1]
        return outcome(reply), committed

    async def go() -> None:
        topology = Topology(replicas=1, partitions=PARTITIONS, lease_ttl_s=2.0)
        broker_nc, detect_nc = await connections(jetstream, topology)
        ingest = await broker_ingest(broker_nc, topology, engine, monitoring, publish, outcome_timeout_s=1.0)

        # No detect node: the report is in the stream but not committed -> never `accepted`.
        assert await answer(ingest, "dev-1", 1) == ("ServiceUnavailable", None)
        # its headers say whom to answer, should a detect node be unable to read the payload
        held = await broker_nc.jetstream().get_last_msg(topology.stream, topology.subject_of(partition_of("dev-1", PARTITIONS)))
        assert (held.headers or {}).get(REPLY_HEADER) == reply_subject("broker-1")
        assert (held.headers or {}).get(REPORT_ID_HEADER) == "1"

        detect = await detect_node(api, engine, monitoring, detect_nc, topology)
        await until(lambda: stored_id("dev-1") == 1)  # the detect node committed the first copy

        # The device's resend: JetStream holds it already (duplicate), PostgreSQL says it is committed.
        assert await answer(ingest, "dev-1", 1) == ("ACCEPTED", 1)
        assert await answer(ingest, "dev-1", 1) == ("DuplicateReportId", 1)  # now this node knows it
        for thing in ("dev-2", "dev-3", "dev-4"):  # accepted only once committed
            assert await answer(ingest, thing, 7) == ("ACCEPTED", 7)
        assert await answer(ingest, "dev-2", 8) == ("ACCEPTED", 8)
        count = len(replies)  # two reports of one thing in one batch: both stored, in report order
        ingest.submit("dev-6", "json", payload(1))
        ingest.submit("dev-6", "json", payload(2))
        await until(lambda: len(replies) == count + 2)
        assert [(outcome(r), r["reportId"]) for _, r, _ in replies[-2:]] == [("ACCEPTED", 1), ("ACCEPTED", 2)]
        assert stored_id("dev-6") == 2

        await broker_nc.close()  # NATS gone for the broker node: no PubAck -> retryable, not accepted
        assert await answer(ingest, "dev-5", 1) == ("ServiceUnavailable", None)
        await stop_all(ingest, detect, detect_nc)

    run(go, engine)


def test_a_report_is_answered_on_its_own_outcome_not_the_slowest_of_its_batch(jetstream, postgres, tmp_path: Path):
    """Two devices report at the same instant; one's detect node takes 1.5 s to commit. The other
    device is answered as soon as its own report is committed (batched together, it waited for the
    slow one: measured at 500 reports/s, every answer waited for the slowest report of its batch),
    and so is its next report, sent at once and held until the first is answered (it waited for
    the oldest report in flight, the slow one)."""
    url = postgres.create_database(f"broker{time.monotonic_ns()}")
    api = build_api(Settings(data_dir=tmp_path, database_url=url))
    engine = api.context.engine
    monitoring = MonitoringIndex(engine, api.context.arn(""))
    topology = Topology(replicas=1, partitions=PARTITIONS, lease_ttl_s=2.0)
    fast, slow = (next(f"{name}-{i}" for i in range(100) if partition_of(f"{name}-{i}", PARTITIONS) == partition)
                  for name, partition in (("fast", 0), ("slow", 1)))
    heard: dict[tuple[str, int], float] = {}

    def publish(topic: str, body: bytes) -> None:
        reply = orjson.loads(body)
        assert reply["status"] == "ACCEPTED", reply
        heard[reply["thingName"], reply["reportId"]] = time.monotonic()

    async def go() -> None:
        broker_nc = await nats.connect(servers=jetstream.urls)
        detect_nc = await nats.connect(servers=jetstream.urls)
        await ensure(broker_nc.jetstream(), topology)
        send = OutcomeSender(detect_nc)

        async def commit(partition: int, token: int, deliveries: Sequence[Delivery], more: More) -> None:
            # A detect node whose commit of the slow thing's partition takes 1.5 s.
            messages = [(d, decode(d.payload)) for d in deliveries]
            if any(m.thing == slow for _, m in messages):
                await asyncio.sleep(1.5)
            await send([ReportOutcome(d.stream_sequence, m.thing, Status.STORED, m.report_id, m.encoding,
                                                 m.reply_to) for d, m in messages])

        detect = DetectConsumer(detect_nc.jetstream(), topology, "detect-1", commit)
        await detect.start()
        await until(lambda: len(detect.readers) == PARTITIONS)
        ingest = await broker_ingest(broker_nc, topology, engine, monitoring, publish, outcome_timeout_s=5.0)
        sent = time.monotonic()
        ingest.submit(slow, "json", payload(1))
        ingest.submit(fast, "json", payload(1))
        ingest.submit(fast, "json", payload(2))
        await until(lambda: len(heard) == 3)
        assert heard[slow, 1] - sent >= 1.5
        for report_id in (1, 2):
            waited = heard[fast, report_id] - sent
            assert waited < 1.0, f"the fast device's report {report_id} waited {waited:.2f} s"
        assert heard[fast, 1] < heard[fast, 2]
        await stop_all(ingest, detect, broker_nc, detect_nc)

    run(go, engine)


def test_a_committed_report_whose_outcome_is_lost_is_accepted_from_postgresql(jetstream, postgres, tmp_path: Path):
    """The detect node commits but its outcome never reaches the broker node (core NATS is at most
    once: lost with a server that died). After the usual wait the broker node reads PostgreSQL and
    answers ``accepted`` — not ``ServiceUnavailable`` after the whole outcome timeout (10 s here),
    which made every device of a NATS server's death wait that long and resend."""
    api, engine, monitoring = database(postgres, tmp_path)
    heard: list[tuple[str, float]] = []

    def publish(topic: str, body: bytes) -> None:
        heard.append((outcome(orjson.loads(body)), time.monotonic()))

    async def go() -> None:
        topology = Topology(replicas=1, partitions=PARTITIONS, lease_ttl_s=2.0)
        broker_nc, detect_nc = await connections(jetstream, topology)
        detection = DetectionService(engine, MonitoringIndex(engine, api.context.arn("")), AlertRoutes(), 172800.0,
                                     partition_of=partial(partition_of, partitions=PARTITIONS))
        store = PartitionBatchStore(monitoring, detection, lambda events: None)  # tells no one
        detect = DetectConsumer(detect_nc.jetstream(), topology, "detect-1", store.handle,
                                on_acquired=store.on_acquired, on_released=store.on_released)
        await detect.start()
        await until(lambda: len(detect.readers) == PARTITIONS)
        ingest = await broker_ingest(broker_nc, topology, engine, monitoring, publish, outcome_timeout_s=10.0,
                                     outcome_patience_s=0.5)
        sent = time.monotonic()
        for thing in ("lost-1", "lost-2", "lost-3"):
            ingest.submit(thing, "json", payload(1))
        await until(lambda: len(heard) == 3)
        assert [answer for answer, _ in heard] == ["ACCEPTED"] * 3
        assert max(at for _, at in heard) - sent < 5.0  # not the 10 s outcome timeout
        await stop_all(ingest, detect, broker_nc, detect_nc)

    run(go, engine)


def test_a_resend_of_a_report_rejected_to_a_connection_the_device_left_is_answered(jetstream, postgres,
                                                                                 tmp_path: Path):
    """The rolling-upgrade trial's stall: a detect node rejected a report (``InternalError``) and
    answered it through the broker node the device was leaving; the device resent it through
    another node, where JetStream held it (duplicate), its first outcome was gone and nothing was
    stored, so each resend was answered ``ServiceUnavailable`` for the whole duplicate window
    (120 s). Now the resend is published again under its own message id after the patience and
    answered from that copy (here stored: accepted), within seconds."""
    api, engine, monitoring = database(postgres, tmp_path)
    heard: list[tuple[str, float]] = []
    seen: list[tuple[str, int, str]] = []

    def publish(topic: str, body: bytes) -> None:
        heard.append((outcome(orjson.loads(body)), time.monotonic()))

    async def go() -> None:
        topology = Topology(replicas=1, partitions=PARTITIONS, lease_ttl_s=2.0)
        broker_nc, detect_nc = await connections(jetstream, topology)
        send = OutcomeSender(detect_nc)

        async def commit(partition: int, token: int, deliveries: Sequence[Delivery], more: More) -> None:
            # A detect node that refuses the first copy of a report and stores any later one.
            outcomes = []
            for d in deliveries:
                m = decode(d.payload)
                first = all((t, r) != (m.thing, m.report_id) for t, r, _ in seen)
                seen.append((m.thing, m.report_id, m.reply_to))
                outcomes.append(ReportOutcome(d.stream_sequence, m.thing, Status.REJECTED if first else Status.STORED,
                                              m.report_id, m.encoding, m.reply_to,
                                              error_code="InternalError" if first else None))
            await send(outcomes)

        detect = DetectConsumer(detect_nc.jetstream(), topology, "detect-1", commit)
        await detect.start()
        await until(lambda: len(detect.readers) == PARTITIONS)
        # The first copy, published by the node the device has left: its rejection goes there.
        await ReportPublisher(broker_nc.jetstream(), topology).publish(
            "mover", encode(ReportMessage("mover", {}, time.time(), 1, "json", reply_subject("broker-left"))),
            report_message_id("mover", 1))
        await until(lambda: len(seen) == 1)
        ingest = await broker_ingest(broker_nc, topology, engine, monitoring, publish, outcome_timeout_s=5.0,
                                     outcome_patience_s=0.5)
        sent = time.monotonic()
        ingest.submit("mover", "json", payload(1))  # the device's resend through this node
        await until(lambda: len(heard) == 1)
        assert heard[0][0] == "ACCEPTED", heard
        assert heard[0][1] - sent < 3.0  # not the 5 s outcome timeout, nor the duplicate window
        assert [(t, r, to) for t, r, to in seen] == [("mover", 1, reply_subject("broker-left")),
                                                     ("mover", 1, reply_subject("broker-1"))]
        await stop_all(ingest, detect, broker_nc, detect_nc)

    run(go, engine)


def test_a_resend_of_a_report_in_flight_on_the_same_broker_node_gets_the_first_copys_answer(
        jetstream, postgres, tmp_path: Path):
    """The device resends its unacknowledged report to the same broker node while the first copy
    waits for its detect node: it was refused DuplicateReportId, then the first copy was accepted."""
    api, engine, monitoring = database(postgres, tmp_path)
    topology = Topology(replicas=1, partitions=PARTITIONS, lease_ttl_s=2.0)
    replies: list[dict[str, Any]] = []

    def publish(topic: str, body: bytes) -> None:
        replies.append(orjson.loads(body))

    async def go() -> None:
        broker_nc, detect_nc = await connections(jetstream, topology)
        ingest = await broker_ingest(broker_nc, topology, engine, monitoring, publish, outcome_timeout_s=20.0)
        ingest.submit("dev-1", "json", payload(3))  # no detect node yet: the first copy waits
        await until(lambda: ingest._outstanding == 1)
        ingest.submit("dev-1", "json", payload(3))  # the resend
        detect = await detect_node(api, engine, monitoring, detect_nc, topology)
        await until(lambda: len(replies) == 2)
        assert [(outcome(r), r["reportId"]) for r in replies] == [("ACCEPTED", 3)] * 2
        await stop_all(ingest, detect, broker_nc, detect_nc)

    run(go, engine)


def test_a_transactions_outcomes_beyond_one_nats_message_all_reach_the_broker_node(jetstream):
    """20,000 outcomes for one broker node (~3 MB; a detect node catching up takes up to 256
    reports a partition into one transaction) pass NATS' 1 MB message: they go in several
    messages, in order, and every one arrives."""
    async def go() -> None:
        broker_nc, detect_nc = await nats.connect(servers=jetstream.urls), await nats.connect(servers=jetstream.urls)
        received: list[ReportOutcome] = []
        messages = 0

        async def arrived(msg: Any) -> None:
            nonlocal messages
            messages += 1
            received.extend(decode_outcomes(msg.data))

        await broker_nc.subscribe(reply_subject("broker-1"), cb=arrived)
        await broker_nc.flush()
        sent = [ReportOutcome(n, f"device-{n:07d}", Status.STORED, report_id=1_764_000_000 + n, encoding="json",
                              reply_to=reply_subject("broker-1")) for n in range(20_000)]
        await OutcomeSender(detect_nc)(sent)
        await until(lambda: len(received) >= len(sent))
        assert received == sent and messages > 1
        await broker_nc.close()
        await detect_nc.close()

    asyncio.run(asyncio.wait_for(go(), 60))
