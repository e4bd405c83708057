"""A detect node's partition batches against real PostgreSQL: fenced, idempotent on each thing's
report id, alarm states taken over and given up per partition, poison messages answered.

Each node is what a detect process holds (its own engine, monitoring index, detection service and
``PartitionBatchStore``) over one shared database; deliveries are built as ``PartitionReader``
builds them, with the stream sequences a redelivery would repeat.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.alerts.subscriptions import Webhook
from iotdefender.cluster.fencing import Fenced
from iotdefender.cluster.partitions import partition_of
from iotdefender.cluster.report_stream import Delivery
from iotdefender.pipeline.batch_store import EventSummary
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.pipeline.partition_store import OutcomeListener, PartitionBatchStore, ignore_outcomes
from iotdefender.pipeline.report_message import ReportMessage, ReportOutcome, Status, encode
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store import violations
from iotdefender.store.availability import StoreUnavailable
from iotdefender.store.database import create_engine
from tests.support import connection_attempts
from tests.support.processes import PostgresCluster

pytestmark = pytest.mark.postgres

ACCOUNT = "123456789012"
TOPIC = f"arn:aws:sns:us-east-1:{ACCOUNT}:ops"
PORTS = "aws:num-listening-tcp-ports"
P, Q, R = 3, 5, 9  # partitions of the default 64


def things_in(partition: int, count: int, prefix: str = "dev") -> list[str]:
    names = (f"{prefix}-{i}" for i in itertools.count())
    return list(itertools.islice((name for name in names if partition_of(name) == partition), count))


@dataclass
class Node:
    detection: DetectionService
    store: PartitionBatchStore
    events: list[EventSummary]
    engine: sa.Engine

    def alarmed(self) -> set[str]:
        return {key[0] for key, _ in self.detection.evaluator.alarms()}


@pytest.fixture
def database(postgres, tmp_path: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    yield prepared(postgres.create_database(f"part{time.monotonic_ns()}"), tmp_path)


def prepared(url: str, tmp_path: Path) -> str:
    """The database at ``url`` migrated, with one profile on every thing."""
    api = build_api(Settings(data_dir=tmp_path, database_url=url))
    api.invoke("CreateSecurityProfile", {
        "securityProfileName": "p",
        "behaviors": [{"name": "few-ports", "metric": PORTS,
                       "criteria": {"comparisonOperator": "less-than", "value": {"count": 3}}}],
        "alertTargets": {"SNS": {"alertTargetArn": TOPIC, "roleArn": f"arn:aws:iam::{ACCOUNT}:role/r"}}})
    api.invoke("AttachSecurityProfile", {"securityProfileName": "p",
                                         "securityProfileTargetArn": api.context.arn("all/things")})
    api.context.engine.dispose()
    return url


@pytest.fixture
def node(database: str) -> Iterator[Any]:
    engines: list[sa.Engine] = []

    def make(listener: Callable[[list[EventSummary]], None] | None = None,
             outcomes: OutcomeListener = ignore_outcomes, url: str = database) -> Node:
        engine = create_engine(url)
        engines.append(engine)
        monitoring = MonitoringIndex(engine, f"arn:aws:iot:us-east-1:{ACCOUNT}:")
        detection = DetectionService(engine, monitoring, AlertRoutes({TOPIC: [Webhook("http://127.0.0.1:9/h", "s")]}),
                                     172800.0)
        events: list[EventSummary] = []
        return Node(detection, PartitionBatchStore(monitoring, detection, listener or events.extend, outcomes), events,
                    engine)

    yield make
    for engine in engines:
        engine.dispose()


def delivery(thing: str, sequence: int, ports: int, report_id: int | None = None) -> Delivery:
    message = ReportMessage(thing, {PORTS: {"count": ports}}, 1000.0 + sequence, report_id or sequence, "json",
                            "iotdefender.replies.b1")
    return Delivery(partition_of(thing), thing, encode(message), sequence, 1)


def counts(database: str) -> dict[str, int]:
    engine = create_engine(database)
    with engine.connect() as conn:
        found = {table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                 for table in ("metric_values", "violation_events", "alert_outbox")}
    engine.dispose()
    return found


def event_types(database: str, thing: str) -> list[str]:
    engine = create_engine(database)
    with engine.connect() as conn:
        found = [row[0] for row in conn.execute(sa.text(
            "SELECT event_type FROM violation_events WHERE thing_name = :t ORDER BY id"), {"t": thing})]
    engine.dispose()
    return found


def alarms_in_p_and_q(a: Node) -> tuple[str, str]:
    """Node ``a`` owns P (token 10) and Q (11), with one thing in alarm in each."""
    thing, other = things_in(P, 1)[0], things_in(Q, 1)[0]
    a.store.acquire(P, 10)
    a.store.acquire(Q, 11)
    a.store.store(P, 10, [delivery(thing, 1, ports=5)])
    a.store.store(Q, 11, [delivery(other, 1, ports=5)])
    return thing, other


def test_a_batch_redelivered_with_the_same_sequences_stores_nothing_twice(database, node):
    a, b = node(), node()
    things = things_in(P, 4)
    batch = [delivery(thing, i + 1, ports=5) for i, thing in enumerate(things)]  # each raises an alarm
    a.store.acquire(P, 10)
    assert {o.status for o in a.store.store(P, 10, batch)} == {Status.STORED}
    stored = counts(database)
    assert stored == {"metric_values": 4, "violation_events": 4, "alert_outbox": 4}

    again = a.store.store(P, 10, batch)  # the reader's ack was lost: the same node reads it again
    assert [(o.status, o.thing, o.report_id, o.reply_to) for o in again] == [
        (Status.DUPLICATE, d.thing_name, d.stream_sequence, "iotdefender.replies.b1") for d in batch]
    b.store.acquire(P, 20)  # the node died between commit and ack: the next owner gets the batch
    assert {o.status for o in b.store.store(P, 20, batch)} == {Status.DUPLICATE}
    later = delivery(things[0], 5, ports=5)  # the stream goes on: a new report is stored
    assert b.store.store(P, 20, batch + [later])[-1].status is Status.STORED
    assert counts(database) == {**stored, "metric_values": 5}


def test_a_delivery_that_comes_back_after_newer_ones_were_committed_is_stored(database, node):
    """A delivery lost with a NATS server (or nakked) comes back after reports that followed it in
    the stream were committed: it was never stored, so it is stored now, not counted a duplicate
    (the first design's per-partition "highest sequence committed" answered it accepted and lost it)."""
    a, b = node(), node()
    late, early = things_in(P, 2)
    a.store.acquire(P, 10)
    assert [o.status for o in a.store.store(P, 10, [delivery(early, 2, ports=5, report_id=1)])] == [Status.STORED]
    assert [o.status for o in a.store.store(P, 10, [delivery(late, 1, ports=5, report_id=1)])] == [Status.STORED]
    assert counts(database) == {"metric_values": 2, "violation_events": 2, "alert_outbox": 2}
    b.store.acquire(P, 20)  # and on the next owner, for a delivery the previous owner never got
    missed = things_in(P, 3)[2]
    assert [o.status for o in b.store.store(P, 20, [delivery(early, 4, ports=1, report_id=2)])] == [Status.STORED]
    assert [o.status for o in b.store.store(P, 20, [delivery(missed, 3, ports=5, report_id=1)])] == [Status.STORED]
    assert event_types(database, missed) == ["in-alarm"] and b.alarmed() == {late, missed}


def test_a_resend_after_the_duplicate_window_is_not_stored_twice(database, node):
    """JetStream forgets message ids after its duplicate window: a device's resend then arrives as a
    new message (a new sequence) and must be recognised by its thing's stored report id."""
    a = node()
    thing, other = things_in(P, 2)
    a.store.acquire(P, 10)
    assert [o.status for o in a.store.store(P, 10, [delivery(thing, 1, ports=5, report_id=7)])] == [Status.STORED]
    resent = [delivery(thing, 2, ports=5, report_id=7),  # the same report, past the window
              delivery(thing, 3, ports=5, report_id=6),  # an older one: stale
              delivery(other, 4, ports=5, report_id=6),  # another thing's: stored
              delivery(thing, 5, ports=1, report_id=9),  # the thing's next report: stored
              delivery(thing, 6, ports=1, report_id=9)]  # ... and its copy in the same batch
    outcomes = a.store.store(P, 10, resent)
    assert [(o.status, o.error_code) for o in outcomes] == [
        (Status.DUPLICATE, None), (Status.REJECTED, "StaleReportId"), (Status.STORED, None),
        (Status.STORED, None), (Status.DUPLICATE, None)]
    assert counts(database) == {"metric_values": 3, "violation_events": 3, "alert_outbox": 3}
    assert event_types(database, thing) == ["in-alarm", "alarm-cleared"]


def test_a_stale_token_is_fenced_and_stores_nothing(database, node):
    a, b = node(), node()
    thing = things_in(P, 1)[0]
    a.store.acquire(P, 10)
    b.store.acquire(P, 20)  # a newer owner claimed the partition
    with pytest.raises(Fenced):
        a.store.store(P, 10, [delivery(thing, 1, ports=5), delivery(thing, 2, ports=1)])
    assert counts(database) == {"metric_values": 0, "violation_events": 0, "alert_outbox": 0}
    assert a.alarmed() == set() and a.events == []
    with pytest.raises(Fenced):
        a.store.acquire(P, 10)  # re-acquiring with the old token is refused too
    assert [o.status for o in b.store.store(P, 20, [delivery(thing, 1, ports=5)])] == [Status.STORED]


def test_the_next_owner_takes_over_the_alarms_of_exactly_that_partition(database, node):
    a, b = node(), node()
    thing, other = alarms_in_p_and_q(a)
    assert a.alarmed() == {thing, other}

    b.store.acquire(P, 20)
    assert b.alarmed() == {thing}  # the partition's alarm, not the other partition's
    b.store.store(P, 20, [delivery(thing, 2, ports=6)])  # still violating: no second in-alarm
    b.store.store(P, 20, [delivery(thing, 3, ports=1)])  # compliant: cleared
    assert event_types(database, thing) == ["in-alarm", "alarm-cleared"]
    assert b.events == [("alarm-cleared", "p", "few-ports")]
    assert b.alarmed() == set()

    a.store.release(P)  # a gives up P: forgets its things, keeps Q's
    assert a.alarmed() == {other}
    a.store.release(Q)
    assert a.alarmed() == set()


def test_partitions_released_together_are_forgotten_in_one_pass_over_the_things_held(database, node):
    """A node giving several partitions away at once (a node joined) forgets them in one pass over
    what it holds, not one pass each (each pass hashes every held thing's name), and only them."""
    a = node()
    alarms_in_p_and_q(a)
    r = 7
    kept = things_in(r, 1)[0]
    a.store.acquire(r, 12)
    a.store.store(r, 12, [delivery(kept, 1, ports=5)])
    passes: list[int] = []
    give_up = a.detection.give_up

    def counted(owns: Callable[[str], bool]) -> None:
        passes.append(1)
        give_up(owns)

    a.detection.give_up = counted  # type: ignore[method-assign]

    async def released_together() -> None:
        await asyncio.gather(a.store.on_released(P), a.store.on_released(Q))

    asyncio.run(released_together())
    assert a.alarmed() == {kept}
    assert len(passes) == 1


def test_a_release_sorts_the_things_held_outside_the_detection_lock(database, node):
    """Which of the things held are a released partition's is asked (a hash of each name) outside
    the detection lock: asked under it, every partition's batches waited ~0.7 s at a 10M fleet's
    per-node share (bench/takeover_install.py)."""
    a = node()
    thing, other = alarms_in_p_and_q(a)
    asked: list[tuple[str, bool]] = []
    give_up = a.detection.give_up

    def watched(owns: Callable[[str], bool]) -> None:
        def asking(name: str) -> bool:
            asked.append((name, a.detection._lock.locked()))
            return owns(name)
        give_up(asking)

    a.detection.give_up = watched  # type: ignore[method-assign]
    a.store.release(P)
    assert sorted(name for name, _ in asked) == sorted([thing, other])
    assert not any(locked for _, locked in asked)
    assert a.alarmed() == {other}


def test_taking_a_partition_over_keeps_the_other_partitions_states_in_memory(database, node):
    b = node()
    other = things_in(Q, 1)[0]
    b.store.acquire(Q, 11)
    b.store.store(Q, 11, [delivery(other, 1, ports=5)])
    with create_engine(database).begin() as conn:  # what memory holds is not read back for Q
        conn.execute(sa.text("DELETE FROM alarm_states"))
    b.store.acquire(P, 20)
    assert b.alarmed() == {other}


def test_a_takeover_reads_outside_the_detection_lock_and_the_owned_partitions_go_on(database, node, monkeypatch):
    """Taking a partition over reads its alarm states and windows (seconds at a large fleet's
    share) while the partitions the node owns already are stored and evaluated: the read is held
    open here, and a batch of an owned partition must commit meanwhile."""
    a, b = node(), node()
    thing, other = alarms_in_p_and_q(b)  # b's alarms, in P and Q
    mine = things_in(R, 1)[0]
    a.store.acquire(R, 30)
    reading, go_on = threading.Event(), threading.Event()
    fetch = violations.fetch_alarm_states

    def held_open(*args: Any) -> Any:
        reading.set()
        assert go_on.wait(30)
        return fetch(*args)

    monkeypatch.setattr(violations, "fetch_alarm_states", held_open)
    taking = threading.Thread(target=a.store.acquire, args=(P, 20))
    taking.start()
    assert reading.wait(10)
    stored = threading.Thread(target=a.store.store, args=(R, 30, [delivery(mine, 1, ports=5)]))
    stored.start()
    stored.join(10)
    committed = not stored.is_alive()
    go_on.set()
    taking.join(30)
    stored.join(30)
    assert committed, "a batch of an owned partition waited for another partition's takeover read"
    assert a.alarmed() == {mine, thing}  # P's alarm loaded, Q's left to its owner
    assert event_types(database, mine) == ["in-alarm"]


def test_a_state_written_without_its_partition_is_taken_over_with_its_thing(database, node):
    """A node of the release before writes alarm states without their partition (a rolling
    upgrade): the next owner of the thing's partition still takes the alarm over, and only it."""
    a, b = node(), node()
    thing, other = alarms_in_p_and_q(a)
    with create_engine(database).begin() as conn:
        conn.execute(sa.text("UPDATE alarm_states SET partition = NULL"))
    b.store.acquire(P, 20)
    assert b.alarmed() == {thing}
    b.store.store(P, 20, [delivery(thing, 2, ports=1)])  # compliant: the alarm it took over clears
    assert event_types(database, thing) == ["in-alarm", "alarm-cleared"]


def test_stored_rows_keep_their_things_partition(database, node):
    """What a takeover reads by partition: the alarm states and the retained reports."""
    a = node()
    thing, other = alarms_in_p_and_q(a)
    with create_engine(database).begin() as conn:
        for table in ("metric_values", "alarm_states"):
            found = set(conn.execute(sa.text(f"SELECT thing_name, partition FROM {table}")).all())
            assert found == {(thing, P), (other, Q)}, table


def test_a_report_the_database_refuses_is_set_aside_and_the_rest_stored_once(database, node):
    a = node()
    good, bad = things_in(P, 2)
    engine = create_engine(database)
    with engine.begin() as conn:  # the database refuses one thing's datapoints (as a full disk or a constraint)
        conn.execute(sa.text(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.thing_name = '{bad}' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$"))
        conn.execute(sa.text("CREATE TRIGGER refuse BEFORE INSERT ON metric_values FOR EACH ROW EXECUTE FUNCTION refuse()"))
    engine.dispose()
    batch = [delivery(good, 1, ports=5), delivery(bad, 2, ports=5), delivery(good, 3, ports=1, report_id=3)]
    a.store.acquire(P, 10)
    outcomes = a.store.store(P, 10, batch)
    assert [o.status for o in outcomes] == [Status.STORED, Status.REJECTED, Status.STORED]
    assert outcomes[1].error_code == "InternalError" and "refused" in (outcomes[1].error_message or "")
    assert event_types(database, good) == ["in-alarm", "alarm-cleared"] and event_types(database, bad) == []
    assert counts(database)["metric_values"] == 2
    # Redelivered: nothing is stored or evaluated twice. The thing's last stored report is recognised;
    # the one before it, in the same batch, is below the thing's stored report id and refused as
    # stale (the report id per thing cannot tell it was stored: docs/cluster.md, "Why not the
    # stream sequence"); the refused one is tried again.
    again = a.store.store(P, 10, batch)
    assert [(o.status, o.error_code) for o in again] == [
        (Status.REJECTED, "StaleReportId"), (Status.REJECTED, "InternalError"), (Status.DUPLICATE, None)]
    assert counts(database)["metric_values"] == 2 and event_types(database, good) == ["in-alarm", "alarm-cleared"]
    engine = create_engine(database)
    with engine.begin() as conn:  # the database takes it now
        conn.execute(sa.text("DROP TRIGGER refuse ON metric_values"))
    engine.dispose()
    assert a.store.store(P, 10, batch)[1].status is Status.STORED
    assert counts(database)["metric_values"] == 3 and event_types(database, bad) == ["in-alarm"]


def test_a_poison_message_is_answered_and_the_partition_keeps_flowing(database, node):
    a = node()
    thing = things_in(P, 1)[0]
    a.store.acquire(P, 10)
    poison = [Delivery(P, thing, b"\xc1 not msgpack", 2, 1, reply_to="replies.b", report_id=2),
              Delivery(P, thing, encode(ReportMessage(thing, {}, 1.0, 9, "json", "r", version=2)), 3, 1,
                       reply_to="replies.b", report_id=3),
              Delivery(P, thing, encode(ReportMessage(things_in(Q, 1)[0], {}, 1.0, 9, "json", "r")), 4, 1),
              Delivery(P, thing, b"\xc1 from a release before the reply headers", 6, 1)]
    outcomes = a.store.store(P, 10, [delivery(thing, 1, ports=5), *poison, delivery(thing, 5, ports=1)])
    assert [o.status for o in outcomes] == [Status.STORED, Status.REJECTED, Status.REJECTED, Status.REJECTED,
                                            Status.REJECTED, Status.STORED]
    assert {o.error_code for o in outcomes[1:5]} == {"InternalError"}
    # the device is told through its broker node when the headers name them, else no one can be
    assert [(o.reply_to, o.report_id) for o in outcomes[1:5]] == [("replies.b", 2), ("replies.b", 3),
                                                                   (None, None), (None, None)]
    assert "version 2" in (outcomes[2].error_message or "")
    assert "does not belong to partition" in (outcomes[3].error_message or "")
    assert event_types(database, thing) == ["in-alarm", "alarm-cleared"]


def test_the_invalidation_sweep_touches_only_owned_partitions_and_is_fenced(database, node):
    a, b = node(), node()
    thing, other = alarms_in_p_and_q(a)
    silent = 1000.0 + 3 * 172800.0  # both devices silent past the invalidation period

    assert a.store.sweep(silent, {Q: 11}) == [("alarm-invalidated", "p", "few-ports")]
    assert event_types(database, other) == ["in-alarm", "alarm-invalidated"]
    assert event_types(database, thing) == ["in-alarm"]  # P is not in the owned map: left to its owner

    b.store.acquire(P, 20)  # P moved on while a still remembers it
    with pytest.raises(Fenced):
        a.store.sweep(silent, {P: 10})
    assert event_types(database, thing) == ["in-alarm"]
    assert b.store.sweep(silent, {P: 20}) == [("alarm-invalidated", "p", "few-ports")]


def test_batches_of_several_partitions_waiting_together_commit_in_one_transaction(database, node):
    """One commit for every partition batch waiting (32 partitions' small batches used to wait for
    one transaction each); a partition fenced among them fails alone, the others are stored."""
    transactions: list[list[EventSummary]] = []  # one listener call per committed transaction
    a, b = node(transactions.append), node()
    R = 7
    things = {p: things_in(p, 2, prefix=f"x{p}") for p in (P, Q, R)}
    tokens = {P: 10, Q: 11, R: 12}
    for partition, token in tokens.items():
        a.store.acquire(partition, token)
    sequences = itertools.count(1)

    def batch(partition: int, ports: int) -> tuple[int, int, list[Delivery]]:
        return partition, tokens[partition], [delivery(thing, next(sequences), ports=ports)
                                              for thing in things[partition]]

    async def handled_together() -> None:  # three readers hand their batches over at once
        await asyncio.gather(*(a.store.handle(*batch(p, ports=5)) for p in (P, Q, R)))

    asyncio.run(handled_together())
    assert len(transactions) == 1 and len(transactions[0]) == 6  # six things in alarm, one commit
    assert counts(database)["metric_values"] == 6

    transactions.clear()
    b.store.acquire(Q, 21)  # Q moved on to b
    results = a.store.store_many([batch(P, ports=1), batch(Q, ports=1), batch(R, ports=1)])
    assert isinstance(results[1], Fenced)
    assert [[o.status for o in r] for r in (results[0], results[2])] == [[Status.STORED] * 2] * 2  # type: ignore[union-attr]
    assert len(transactions) == 2  # P and R each on its own, after the shared transaction failed
    assert counts(database)["metric_values"] == 10
    for thing in things[P] + things[R]:
        assert event_types(database, thing) == ["in-alarm", "alarm-cleared"]
    assert [event_types(database, thing) for thing in things[Q]] == [["in-alarm"], ["in-alarm"]]


def test_the_outcomes_of_one_transaction_are_told_once_before_any_batch_is_acked(database, node):
    """Three partitions' batches committed together: their outcomes are told in one call (one
    message per broker node; it was one per partition batch), before any reader returns to ack;
    a fenced batch's reports are not among them (nakked, their next owner answers)."""
    told: list[list[ReportOutcome]] = []
    returned: list[int] = []

    async def tell(outcomes: list[ReportOutcome]) -> None:
        assert not returned, "a reader returned (and would ack) before its outcomes were told"
        told.append(outcomes)

    a, b = node(outcomes=tell), node()
    R = 7
    things = {p: things_in(p, 2, prefix=f"o{p}") for p in (P, Q, R)}
    tokens = {P: 10, Q: 11, R: 12}
    for partition, token in tokens.items():
        a.store.acquire(partition, token)
    sequences = itertools.count(1)

    async def handled(partition: int) -> None:
        await a.store.handle(partition, tokens[partition],
                             [delivery(thing, next(sequences), ports=1) for thing in things[partition]])
        returned.append(partition)

    async def together() -> list[Any]:
        return await asyncio.gather(*(handled(p) for p in (P, Q, R)), return_exceptions=True)

    assert asyncio.run(together()) == [None, None, None]
    assert len(told) == 1
    assert sorted((o.thing, o.status) for o in told[0]) == sorted(
        (thing, Status.STORED) for p in (P, Q, R) for thing in things[p])

    told.clear()
    returned.clear()
    b.store.acquire(Q, 21)  # Q moved on to b: its batch fails, P's and R's are stored apart
    results = asyncio.run(together())
    assert isinstance(results[1], Fenced) and results[0] is None and results[2] is None
    assert len(told) == 1
    assert sorted(o.thing for o in told[0]) == sorted(things[P] + things[R])


def test_a_reader_whose_batch_committed_joins_the_next_transaction(database, node):
    """A partition's reports that arrived while its batch was being committed go into the very
    next transaction, with the batches that waited meanwhile. The writer used to take those at
    once, before the reader (woken by the commit) could hand its next batch over, so that batch
    waited a whole transaction more: at 1,000 reports/s most partitions are in every transaction."""
    told: list[list[str]] = []  # the things of each transaction's outcomes, in order

    async def tell(outcomes: list[ReportOutcome]) -> None:
        told.append(sorted(o.thing for o in outcomes))

    a = node(outcomes=tell)
    (first, second), other = things_in(P, 2, prefix="n"), things_in(Q, 1, prefix="n")[0]
    a.store.acquire(P, 10)
    a.store.acquire(Q, 11)

    async def reader_of_p() -> None:  # two batches: the second came while the first was committed
        await a.store.handle(P, 10, [delivery(first, 1, ports=1)])
        await a.store.handle(P, 10, [delivery(second, 2, ports=1)])

    async def run() -> None:
        with a.detection.transaction():  # a transaction in progress (an earlier batch's, a sweep's)
            reader = asyncio.create_task(reader_of_p())
            await asyncio.sleep(0.05)  # P's first batch is taken and waits for the lock
            waiting = asyncio.create_task(a.store.handle(Q, 11, [delivery(other, 3, ports=1)]))
            await asyncio.sleep(0.05)  # ... and Q's waits for the writer
        await asyncio.wait_for(asyncio.gather(reader, waiting), 10)

    asyncio.run(run())
    assert told == [[first], sorted([other, second])]


def test_reports_that_reach_a_waiting_batch_are_stored_in_the_same_next_transaction(database, node):
    """A partition's batch handed over while the writer is in a transaction waits for it; reports
    its reader receives meanwhile join that batch when the next transaction starts (the writer
    takes them through ``more``) instead of waiting for one more transaction after it, and are
    answered with it. Without that, a report reaching a partition whose batch waits paid two
    transactions of waiting at 1,000 reports/s (bench/README.md)."""
    told: list[list[str]] = []  # the things of each transaction's outcomes

    async def tell(outcomes: list[ReportOutcome]) -> None:
        told.append(sorted(o.thing for o in outcomes))

    a = node(outcomes=tell)
    (first, second, third), other = things_in(P, 3, prefix="w"), things_in(Q, 1, prefix="w")[0]
    a.store.acquire(P, 10)
    a.store.acquire(Q, 11)
    arrived: list[Delivery] = []  # P's deliveries its reader has received and not handed over
    handed: list[list[str]] = []  # P's batches as its reader handed them, then as stored

    def more(accept: Callable[[Delivery], bool]) -> list[Delivery]:  # as PartitionReader's: in order
        taken = list(itertools.takewhile(accept, arrived))
        del arrived[:len(taken)]
        return taken

    async def reader_of_p() -> None:  # hands what it has, waits for the commit, then the rest
        while arrived:
            batch, arrived[:] = list(arrived), []
            handed.append([d.thing_name for d in batch])
            await a.store.handle(P, 10, batch, more)

    async def run() -> None:
        with a.detection.transaction():  # a transaction in progress (an earlier batch's, a sweep's)
            busy = asyncio.create_task(a.store.handle(Q, 11, [delivery(other, 1, ports=1)]))
            await asyncio.sleep(0.05)  # Q's batch is taken: the writer waits for the lock with it
            arrived.append(delivery(first, 2, ports=5))
            reader = asyncio.create_task(reader_of_p())
            await asyncio.sleep(0.05)  # P's batch waits for the writer
            arrived.extend([delivery(second, 3, ports=5), delivery(third, 4, ports=1)])
        await asyncio.wait_for(asyncio.gather(busy, reader), 10)

    asyncio.run(run())
    assert handed == [[first]]  # one batch: the reports that came while it waited joined it
    assert told == [[other], sorted([first, second, third])]
    assert counts(database) == {"metric_values": 4, "violation_events": 2, "alert_outbox": 2}
    assert event_types(database, first) == event_types(database, second) == ["in-alarm"]


def test_a_batch_whose_reader_fails_to_add_to_it_is_stored_as_handed_and_the_writer_goes_on(database, node):
    """``More`` is the reader's code, called by the writer: should it raise, the batch is stored as
    handed over and the writer keeps serving the other batches (a dead writer would leave every
    reader waiting for ever)."""
    a = node()
    first, second = things_in(P, 2, prefix="r")
    a.store.acquire(P, 10)

    def broken(accept: Callable[[Delivery], bool]) -> list[Delivery]:
        raise RuntimeError("the reader's defect")

    async def run() -> None:
        await asyncio.wait_for(a.store.handle(P, 10, [delivery(first, 1, ports=5)], broken), 10)
        await asyncio.wait_for(a.store.handle(P, 10, [delivery(second, 2, ports=5)]), 10)

    asyncio.run(run())
    assert counts(database)["metric_values"] == 2


def test_one_partition_twice_among_the_waiting_batches_is_stored_once_under_its_own_tokens(database, node):
    """A partition re-acquired by the same node while its old reader's batch still waits: both
    readers hand over the same deliveries (the new consumer starts at the oldest unacked). Stored
    together, the old token was checked as the new one and each report stored twice."""
    a = node()
    things = things_in(P, 3)
    batch = [delivery(thing, i + 1, ports=5) for i, thing in enumerate(things)]
    a.store.acquire(P, 10)
    a.store.acquire(P, 11)  # the lease was lost and taken again: a newer token
    results = a.store.store_many([(P, 10, batch), (P, 11, batch)])
    assert isinstance(results[0], Fenced)  # the old reader's batch: not stored, nakked
    assert [o.status for o in results[1]] == [Status.STORED] * 3  # type: ignore[union-attr]
    assert counts(database) == {"metric_values": 3, "violation_events": 3, "alert_outbox": 3}


def test_an_outage_fails_the_waiting_batches_at_once_and_loses_none(node, tmp_path: Path, monkeypatch):
    """Batches that fail together because the database is away are not tried again one by one:
    each try costs a connection timeout when packets are dropped (5 s), and a node letting its
    partitions go waits for the batches in flight. Every batch is answered unavailable (not
    acked: redelivered), and stored once when the database is back."""
    cluster = PostgresCluster()
    cluster.start()
    try:
        url = prepared(cluster.create_database("outage"), tmp_path)
        a = node(url=url)
        R = 7
        tokens = {P: 10, Q: 11, R: 12}
        for partition, token in tokens.items():
            a.store.acquire(partition, token)
        batches = [(p, tokens[p], [delivery(thing, i + 1, ports=5) for i, thing in
                                   enumerate(things_in(p, 2, prefix=f"u{p}"))]) for p in (P, Q, R)]
        attempts = connection_attempts.counted(monkeypatch)
        cluster.halt()
        a.engine.dispose()  # the pooled connections died with the server
        results = a.store.store_many(batches)
        assert [type(r) for r in results] == [StoreUnavailable] * 3
        assert len(attempts) == 1  # one try for the three, not one more for each
        cluster.resume()
        results = a.store.store_many(batches)
        assert [[o.status for o in r] for r in results] == [[Status.STORED] * 2] * 3  # type: ignore[union-attr]
        assert counts(url)["metric_values"] == 6
    finally:
        cluster.stop()



def test_the_devices_of_batches_the_database_did_not_take_are_told_at_once(node, tmp_path: Path):
    """The database away: each batch handed over fails (not acked, read again) and its devices are
    told ``ServiceUnavailable`` now, not when their broker node's outcome wait runs out (10 s); a
    poison message among them is not answered for it. Back, the same deliveries are stored once."""
    told: list[ReportOutcome] = []

    async def tell(outcomes: list[ReportOutcome]) -> None:
        told.extend(outcomes)

    cluster = PostgresCluster()
    cluster.start()
    try:
        url = prepared(cluster.create_database("unavailable"), tmp_path)
        a = node(outcomes=tell, url=url)
        tokens = {P: 10, Q: 11}
        for partition, token in tokens.items():
            a.store.acquire(partition, token)
        batches = {p: [delivery(thing, i + 1, ports=5) for i, thing in enumerate(things_in(p, 2, prefix=f"v{p}"))]
                   for p in tokens}
        poison = Delivery(P, things_in(P, 1, prefix="vp")[0], b"not a report", 99, 1)

        async def handed_over() -> list[Any]:
            return await asyncio.gather(*(a.store.handle(p, tokens[p], batches[p] + ([poison] if p == P else []))
                                          for p in tokens), return_exceptions=True)

        cluster.halt()
        a.engine.dispose()  # the pooled connections died with the server
        assert [type(r) for r in asyncio.run(handed_over())] == [StoreUnavailable] * 2
        expected = sorted((d.thing_name, d.stream_sequence) for p in tokens for d in batches[p])
        assert sorted((o.thing, o.stream_sequence) for o in told) == expected
        assert {(o.status, o.error_code, o.reply_to) for o in told} == {
            (Status.REJECTED, "ServiceUnavailable", "iotdefender.replies.b1")}
        assert all("send it again with the same report id" in (o.error_message or "") for o in told)
        told.clear()
        cluster.resume()
        assert asyncio.run(handed_over()) == [None, None]
        assert sorted((o.thing, o.status) for o in told if o.report_id is not None) == sorted(
            (thing, Status.STORED) for thing, _ in expected)
        assert counts(url)["metric_values"] == 4
    finally:
        cluster.stop()

def test_fence_moves_asked_for_together_commit_in_one_transaction(database, node):
    """After a leases bucket's election a node re-creates its expired leases in one renewal round:
    their fence moves go in one transaction (each used to take one), the one claimed by another
    node meanwhile is refused alone, and the moved ones store under their new tokens."""
    a, b = node(), node()
    partitions = [2, 3, 5, 7, 11, 13]
    for partition in partitions:
        a.store.acquire(partition, 10 + partition)
    b.store.acquire(7, 100)  # claimed by b meanwhile: a must release it
    commits: list[int] = []
    sa.event.listen(a.engine, "commit", lambda conn: commits.append(1))

    async def renewal_round() -> list[bool]:
        return list(await asyncio.gather(*(a.store.on_retoken(p, 10 + p, 50 + p) for p in partitions)))

    assert asyncio.run(renewal_round()) == [p != 7 for p in partitions]
    assert len(commits) == 1
    with a.engine.connect() as conn:
        fences = dict(conn.execute(sa.text("SELECT partition, token FROM cluster_partition_fences")).all())
    assert fences == {**{p: 50 + p for p in partitions}, 7: 100}
    thing = things_in(3, 1)[0]
    assert [o.status for o in a.store.store(3, 53, [delivery(thing, 1, ports=5)])] == [Status.STORED]
    with pytest.raises(Fenced):
        a.store.store(3, 13, [delivery(thing, 2, ports=5)])


def test_the_writer_serves_a_second_event_loop(database, node):
    """A store outlives the event loop that first handed it a batch (``asyncio.run`` twice, as a
    command or a test does): the next loop's batches get a writer of their own."""
    a = node()
    thing = things_in(P, 1)[0]
    a.store.acquire(P, 10)
    sequences = itertools.count(1)

    failures: list[dict[str, Any]] = []

    async def two_batches() -> None:  # the second waits for a writer that went back to its event
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: failures.append(context))
        for _ in range(2):
            await asyncio.wait_for(a.store.handle(P, 10, [delivery(thing, next(sequences), ports=5)]), 30)

    asyncio.run(two_batches())
    asyncio.run(two_batches())
    assert counts(database)["metric_values"] == 4
    # The writer lived on: before, each batch of the second loop got a writer that then died on the
    # first loop's event ("Task exception was never retrieved").
    assert [context.get("exception") for context in failures] == []


def test_acquisitions_of_one_round_claim_and_load_together(database, node):
    """A node acquiring its share acquires dozens of partitions at once: their fences are claimed
    in one transaction and their things' states and windows loaded in one read (one take-over),
    a partition a newer owner claimed already refused alone."""
    a, b = node(), node()
    partitions = [2, 3, 5, 7, 11, 13]
    b.store.acquire(7, 100)  # a newer owner holds 7
    take_overs: list[int] = []
    take_over = a.detection.take_over

    def counted(claim):  # type: ignore[no-untyped-def]
        take_overs.append(1)
        return take_over(claim)

    a.detection.take_over = counted  # type: ignore[method-assign]

    async def round_of_acquisitions() -> list[Any]:
        return await asyncio.gather(*(a.store.on_acquired(p, 10 + p) for p in partitions), return_exceptions=True)

    results = asyncio.run(round_of_acquisitions())
    assert [type(r) for r in results] == [type(None) if p != 7 else Fenced for p in partitions]
    assert len(take_overs) == 1
    for p in partitions:
        thing = things_in(p, 1, prefix="acq")[0]
        if p == 7:
            with pytest.raises(Fenced):
                a.store.store(p, 17, [delivery(thing, 1, ports=5)])
        else:
            assert [o.status for o in a.store.store(p, 10 + p, [delivery(thing, 1, ports=5)])] == [Status.STORED]
