"""IngestService on a real store (SQLite): every report gets exactly one answer, whatever happens.

The store is the real LocalBatchStore; what a test needs to happen to it (a slow disk, an outage)
is done by a thin wrapper around it, and the replies are collected from the service's publisher.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.pipeline.batch_store import BatchItem, ignore_events
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.local_store import LocalBatchStore
from iotdefender.ingest.service import MAX_HELD_COPIES, IngestService
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.store.availability import StoreUnavailable
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head

ARN = "arn:aws:iot:us-east-1:123456789012:"


class Gated:
    """The real store behind a gate the test opens, or an outage the test switches on."""

    pipeline_depth = 1

    def __init__(self, store: LocalBatchStore) -> None:
        self.store = store
        self.gate = threading.Event()
        self.gate.set()
        self.down = False
        self.poison: str | None = None  # a thing whose datapoints the database refuses
        self.calls = 0

    def store_batch(self, items: Sequence[BatchItem]) -> Any:
        self.gate.wait(30)
        self.calls += 1
        if self.down:
            raise StoreUnavailable("OperationalError: connection refused")
        if any(item[0] == self.poison for item in items):
            raise TypeError("Integer exceeds 64-bit range")  # what the driver raised in issue #11
        return self.store.store_batch(items)


@pytest.fixture
def pipeline():
    engine = create_engine(sqlite_url(Path(tempfile.mkdtemp())))
    upgrade_to_head(engine)
    monitoring = MonitoringIndex(engine, ARN)
    detection = DetectionService(engine, monitoring, AlertRoutes(), 172800.0)
    detection.load()
    return Gated(LocalBatchStore(engine, monitoring, detection, ignore_events)), engine, monitoring


def run(pipeline, scenario, queue_limit: int = 10_000) -> list[tuple[str, dict[str, Any]]]:
    """Run ``scenario(ingest, replies)`` on a fresh IngestService; returns every reply sent."""
    store, engine, monitoring = pipeline
    replies: list[tuple[str, dict[str, Any]]] = []

    def publish(topic: str, payload: bytes) -> None:
        if "+" in topic or "#" in topic:  # as MQTT clients and brokers do
            raise ValueError(f"publish topic {topic!r} contains a wildcard")
        replies.append((topic.split("/", 2)[2], orjson.loads(payload)))

    async def main() -> None:
        ingest = IngestService(engine, monitoring, store, publish, report_min_interval=0.0, queue_limit=queue_limit)
        await ingest.start()
        try:
            await scenario(ingest, replies)
        finally:
            store.gate.set()
            await ingest.stop()

    asyncio.run(main())
    return replies


def payload(report_id: int) -> bytes:
    return orjson.dumps({"header": {"report_id": report_id, "version": "1.0"},
                         "metrics": {"listening_tcp_ports": {"ports": [{"port": 22}], "total": 1}}})


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def outcome(reply: dict[str, Any]) -> str:
    return reply["status"] if reply["status"] == "ACCEPTED" else reply["statusDetails"]["ErrorCode"]


def test_a_full_queue_answers_service_overloaded_and_recovers(pipeline):
    store = pipeline[0]

    async def scenario(ingest, replies):
        store.gate.clear()  # the store stalls: reports pile up
        for n in range(20):
            ingest.submit(f"dev-{n}", "json", payload(1))
        await until(lambda: len(replies) >= 15)
        assert {outcome(r) for _, r in replies} == {"ServiceOverloaded"}
        assert sorted(r["thingName"] for _, r in replies) == sorted(f"dev-{n}" for n in range(5, 20))
        assert all(r["reportId"] == 1 for _, r in replies)
        store.gate.set()
        await until(lambda: len(replies) == 20)
        assert [outcome(r) for _, r in replies[15:]] == ["ACCEPTED"] * 5
        # The refused reports did not advance their thing's order: the resend is stored.
        ingest.submit("dev-7", "json", payload(1))
        await until(lambda: len(replies) == 21)
        assert outcome(replies[-1][1]) == "ACCEPTED"

    run(pipeline, scenario, queue_limit=5)


def test_an_outage_answers_service_unavailable_and_the_resend_is_taken(pipeline):
    store = pipeline[0]

    async def scenario(ingest, replies):
        store.down = True
        ingest.submit("dev-1", "json", payload(100))
        await until(lambda: len(replies) == 1)
        assert outcome(replies[0][1]) == "ServiceUnavailable" and replies[0][1]["reportId"] == 100
        assert replies[0][0] == "dev-1/defender/metrics/json/rejected"
        store.down = False
        ingest.submit("dev-1", "json", payload(100))  # the device's retry: not stale, not a duplicate
        await until(lambda: len(replies) == 2)
        assert outcome(replies[1][1]) == "ACCEPTED"
        ingest.submit("dev-1", "json", payload(100))  # now it is stored: a duplicate
        await until(lambda: len(replies) == 3)
        assert outcome(replies[2][1]) == "DuplicateReportId"

    run(pipeline, scenario)


def test_submit_never_raises_into_the_broker(pipeline):
    """A reply that cannot be published (a wildcard in the thing name) is logged, not raised."""

    async def scenario(ingest, replies):
        ingest.submit("bad+name", "json", payload(1))
        ingest.submit("bad#name", "json", b"not json")
        ingest.submit("good", "json", payload(1))
        await until(lambda: len(replies) == 1)
        assert replies[0][1]["thingName"] == "good"

    run(pipeline, scenario)


def test_one_report_the_store_refuses_costs_the_others_nothing(pipeline):
    store = pipeline[0]

    async def scenario(ingest, replies):
        store.poison = "dev-13"
        store.gate.clear()  # all 40 reports wait for the same batch
        for n in range(40):
            ingest.submit(f"dev-{n}", "json", payload(1))
        store.gate.set()
        await until(lambda: len(replies) == 40)
        answers = {r["thingName"]: r for _, r in replies}
        refused = answers.pop("dev-13")
        assert refused["statusDetails"]["ErrorCode"] == "InternalError"
        assert "64-bit" in refused["statusDetails"]["ErrorMessage"] and refused["reportId"] == 1
        assert {outcome(r) for r in answers.values()} == {"ACCEPTED"} and len(answers) == 39
        assert store.calls <= 1 + 2 * 6  # bisected, not retried one by one

    run(pipeline, scenario)


def test_an_outage_met_before_the_queue_is_answered_too(pipeline, tmp_path):
    """The monitoring snapshot is read from the database when the control plane changed; if the
    database is gone at that moment, the report is answered ServiceUnavailable, not dropped."""
    store, engine, _ = pipeline
    gone = MonitoringIndex(create_engine(sqlite_url(tmp_path / "missing" / "dir")), ARN)

    async def scenario(ingest, replies):
        ingest.submit("dev-1", "json", payload(9))
        await until(lambda: len(replies) == 1)
        assert outcome(replies[0][1]) == "ServiceUnavailable" and replies[0][1]["reportId"] == 9

    run((store, engine, gone), scenario)


class Pipelined:
    """A store that takes two batches at once (as the detection worker does) and records, for each
    batch, which things were in the other batch in flight at the same time."""

    pipeline_depth = 2

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight: list[set[str]] = []
        self.stored: list[tuple[str, int]] = []  # (thing, report id) in commit order
        self.overlaps: list[set[str]] = []
        self.most_in_flight = 0

    def store_batch(self, items: Sequence[BatchItem]) -> Any:
        things = {item[0] for item in items}
        with self.lock:
            for other in self.in_flight:
                self.overlaps.append(things & other)
            self.in_flight.append(things)
            self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        time.sleep(0.02)
        with self.lock:
            self.in_flight.remove(things)
            self.stored += [(item[0], item[3]) for item in items]
        return []


def test_two_batches_in_flight_never_share_a_thing_and_keep_its_order(pipeline):
    _, engine, monitoring = pipeline
    store = Pipelined()
    replies: list[dict[str, Any]] = []

    async def main() -> None:
        ingest = IngestService(engine, monitoring, store, lambda topic, body: replies.append(orjson.loads(body)),
                               report_min_interval=0.0)
        await ingest.start()
        sent = {n: 0 for n in range(20)}
        for wave in range(40):  # 6 of 20 things per wave, a window that slides: some in flight, some not
            for n in ((wave * 3 + k) % 20 for k in range(6)):
                sent[n] += 1
                ingest.submit(f"dev-{n}", "json", payload(sent[n]))
            await asyncio.sleep(0.004)
        await until(lambda: len(replies) == 240)
        await ingest.stop()

    asyncio.run(main())
    assert store.most_in_flight == 2  # the store was given a second batch while storing one
    assert all(not shared for shared in store.overlaps)
    for n in range(20):
        ids = [rid for thing, rid in store.stored if thing == f"dev-{n}"]
        assert ids == list(range(1, len(ids) + 1)) and len(ids) == 12
    assert {outcome(r) for r in replies} == {"ACCEPTED"}


def test_stopping_answers_what_was_accepted_and_refuses_what_comes_after(pipeline):
    """A clean stop (SIGTERM, Ctrl-C) stores and answers every report already queued before the
    broker goes, and answers reports that arrive meanwhile ``ServiceUnavailable`` (retryable)
    rather than queueing them behind the shutdown, where they were never answered."""
    store = pipeline[0]

    async def scenario(ingest, replies):
        store.gate.clear()  # the store is slow: three reports wait in ingest
        for n in range(3):
            ingest.submit(f"early-{n}", "json", payload(1))
        stopping = asyncio.create_task(ingest.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # it waits for the three
        ingest.submit("late", "json", payload(1))
        await until(lambda: len(replies) == 1)
        assert replies[0][1]["thingName"] == "late" and outcome(replies[0][1]) == "ServiceUnavailable"
        store.gate.set()
        await asyncio.wait_for(stopping, 10)
        assert sorted((r["thingName"], outcome(r)) for _, r in replies[1:]) == [
            (f"early-{n}", "ACCEPTED") for n in range(3)]

    run(pipeline, scenario)


def test_started_again_after_a_stop_it_takes_reports_again(pipeline):
    """Cluster mode stops a broker node's intake of an external broker when the node loses the
    intake lock, and starts it again when it takes the lock back (cluster_serve.external_intake):
    the service stopped once used to answer every later report ``ServiceUnavailable``."""
    async def scenario(ingest, replies):
        ingest.submit("before", "json", payload(1))
        await until(lambda: len(replies) == 1)
        await ingest.stop()
        await ingest.start()
        ingest.submit("after", "json", payload(1))
        await until(lambda: len(replies) == 2)
        assert [(r["thingName"], outcome(r)) for _, r in replies] == [("before", "ACCEPTED"), ("after", "ACCEPTED")]

    run(pipeline, scenario)


def test_another_nodes_commit_does_not_tell_this_nodes_database_is_back(pipeline):
    """Cluster mode: a broker node's outcomes are a detect node's transactions. A broker node cut
    off from PostgreSQL called its database available whenever another node stored one of its
    reports, and its /healthz flapped 200/503 every second (an operator's trial). Its own
    database's state comes from its own probes; the single box's commits still count."""
    from iotdefender.ingest.commit import LocalCommitter
    from iotdefender.store.availability import DatabaseHealth

    store, engine, monitoring = pipeline

    class Elsewhere(LocalCommitter):  # committed, as far as ingest knows, by another node
        def __init__(self) -> None:
            super().__init__(store)
            self.commits_here = False

    for committer, available_after in ((Elsewhere(), False), (LocalCommitter(store), True)):
        health = DatabaseHealth(lambda: None)
        health.failed("connection refused")
        replies: list[bytes] = []

        async def main() -> None:
            ingest = IngestService(engine, monitoring, committer, lambda topic, body: replies.append(body),
                                   report_min_interval=0.0, health=health)
            await ingest.start()
            try:
                ingest.submit(f"dev-{available_after}", "json", payload(1))
                await until(lambda: len(replies) == 1)
            finally:
                await ingest.stop()

        asyncio.run(main())
        assert orjson.loads(replies[0])["status"] == "ACCEPTED"
        assert health.available is available_after


def test_a_resend_of_a_report_in_flight_gets_the_first_copys_answer(pipeline):
    """paho resends an unacknowledged QoS 1 report when it reconnects, often while the first copy
    is still being stored: the resend was refused DuplicateReportId, and the first copy answered
    accepted a moment later, a contradictory pair. Now each copy is answered with the outcome of
    the first, and the report is stored once."""
    store, engine, _ = pipeline

    async def scenario(ingest, replies):
        store.gate.clear()  # the first copy is in flight
        ingest.submit("dev-1", "json", payload(5))
        await until(lambda: store.calls == 0 and ingest._outstanding == 1)
        ingest.submit("dev-1", "json", payload(5))  # the resend, before the first is answered
        await asyncio.sleep(0.05)
        assert replies == []  # not answered before the first copy is
        store.gate.set()
        await until(lambda: len(replies) == 2)
        assert [(outcome(r), r["reportId"], topic) for topic, r in replies] == [
            ("ACCEPTED", 5, "dev-1/defender/metrics/json/accepted")] * 2
        assert store.calls == 1
        ingest.submit("dev-1", "json", payload(5))  # a repeat of a report stored earlier: as before
        await until(lambda: len(replies) == 3)
        assert outcome(replies[2][1]) == "DuplicateReportId"

    run(pipeline, scenario)


def test_a_resend_of_a_report_in_flight_that_fails_gets_the_same_failure(pipeline):
    store = pipeline[0]

    async def scenario(ingest, replies):
        store.gate.clear()
        store.down = True
        ingest.submit("dev-1", "json", payload(5))
        ingest.submit("dev-1", "json", payload(5))
        store.gate.set()
        await until(lambda: len(replies) == 2)
        assert [outcome(r) for _, r in replies] == ["ServiceUnavailable"] * 2
        store.down = False
        ingest.submit("dev-1", "json", payload(5))  # the order did not advance: the next resend is taken
        await until(lambda: len(replies) == 3)
        assert outcome(replies[2][1]) == "ACCEPTED"

    run(pipeline, scenario)


def test_copies_of_a_report_in_flight_beyond_a_few_are_refused_as_duplicates(pipeline):
    """They are held in memory until the first copy is answered: a device repeating one report
    while the database stalls must not pile them up."""
    store = pipeline[0]

    async def scenario(ingest, replies):
        store.gate.clear()
        for _ in range(1 + MAX_HELD_COPIES + 2):
            ingest.submit("dev-1", "json", payload(5))
        await until(lambda: len(replies) == 2)
        assert [outcome(r) for _, r in replies] == ["DuplicateReportId"] * 2  # the two beyond the cap
        store.gate.set()
        await until(lambda: len(replies) == 2 + 1 + MAX_HELD_COPIES)
        assert [outcome(r) for _, r in replies[2:]] == ["ACCEPTED"] * (1 + MAX_HELD_COPIES)
        assert store.calls == 1

    run(pipeline, scenario)
