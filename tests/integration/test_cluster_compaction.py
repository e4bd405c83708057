"""History compaction in a cluster, against real PostgreSQL: several detect nodes' compactors on
one database compact each row once, and never pass a row that a detect node's open transaction
is still writing (a paused node), however long it stays open.

The writer is a cluster batch's transaction as ``PartitionBatchStore`` runs it: the partition's
fence row locked first (``fencing.check``), then the datapoints inserted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import orjson
import pytest
import sqlalchemy as sa

from iotdefender.cluster import fencing
from iotdefender.cluster.partitions import partition_of
from iotdefender.store import history
from iotdefender.store.database import create_engine, upgrade_to_head, writing
from iotdefender.store.metric_values import RetainedReport, insert_reports
from iotdefender.store.schema import metric_segments

pytestmark = pytest.mark.postgres


def rows(first: int, count: int) -> list[RetainedReport]:
    return [RetainedReport(f"thing-{i % 5}", 1000.0 + i, {"cpu": {"number": float(i)}}) for i in range(first, first + count)]


def compacted_points(engine: sa.Engine) -> Counter[tuple[str, float, float]]:
    """Every datapoint in the segments, with how often it is there."""
    found: Counter[tuple[str, float, float]] = Counter()
    with engine.connect() as conn:
        for things, index, times, vals in conn.execute(sa.select(
                metric_segments.c.things, metric_segments.c.thing_index, metric_segments.c.times,
                metric_segments.c.vals)):
            names = orjson.loads(things)
            for i, t, v in zip(np.frombuffer(index, "<i4"), np.frombuffer(times, "<f8"), np.frombuffer(vals, "<f8")):
                found[(names[int(i)], float(t), float(v))] += 1
    return found


def expected(reports: list[RetainedReport]) -> Counter[tuple[str, float, float]]:
    return Counter((r.thing_name, r.ts, r.datapoints["cpu"]["number"]) for r in reports)


@pytest.fixture
def url(postgres) -> str:  # type: ignore[no-untyped-def]
    url = postgres.create_database(f"ccomp{time.time_ns()}")
    engine = create_engine(url)
    upgrade_to_head(engine)
    with writing(engine) as conn:
        fencing.claim(conn, 5, 1)
    engine.dispose()
    return url


def test_a_row_of_an_open_transaction_is_not_passed_and_is_compacted_once_it_commits(url):
    writer, node_a, node_b = create_engine(url), create_engine(url), create_engine(url)
    a, b = history.ClusterCompactor(node_a, partition_of), history.ClusterCompactor(node_b, partition_of)
    with writing(writer) as conn:
        insert_reports(conn, rows(0, 10))
    for _ in range(2):
        a.run_once()
        b.run_once()
    with node_a.connect() as conn:
        assert history.last_compacted_id(conn) == history.max_row_id(conn) == 10  # nothing open: compacted
    # A detect node's batch takes its row id, then pauses before COMMIT ...
    paused = writer.connect()
    transaction = paused.begin()
    fencing.check(paused, 5, 1)
    insert_reports(paused, rows(10, 1))
    # ... while another node's batches commit rows after it.
    with writing(writer) as conn:
        insert_reports(conn, rows(11, 10))
    for _ in range(3):  # runs of both nodes, one interval apart: the paused row's id is never passed
        a.run_once()
        b.run_once()
    with node_a.connect() as conn:
        cursor = history.last_compacted_id(conn)
        paused_id = conn.execute(sa.text("SELECT min(id) FROM metric_values WHERE ts = 1010")).scalar()
    assert paused_id is None  # not visible yet: it is in the open transaction
    assert cursor == 10  # not past the paused row (id 11): its horizon waits for the transaction
    transaction.commit()
    paused.close()
    for _ in range(3):
        a.run_once()
        b.run_once()
    with node_a.connect() as conn:
        assert history.last_compacted_id(conn) == history.max_row_id(conn)
        tail = history.read_series(conn, "cpu", 0, 1e9)
    assert compacted_points(node_a) == expected(rows(0, 21))  # every datapoint, each once
    assert len(tail) == 21
    for engine in (writer, node_a, node_b):
        engine.dispose()


def test_nodes_compacting_at_the_same_time_compact_each_row_once(url, monkeypatch):
    monkeypatch.setattr(history, "ROWS_PER_SEGMENT", 13)
    writer = create_engine(url)
    nodes = [create_engine(url) for _ in range(3)]
    compactors = [history.ClusterCompactor(engine, partition_of) for engine in nodes]
    stop = threading.Event()
    written: list[RetainedReport] = []

    def write() -> None:
        first = 0
        while not stop.is_set():
            batch = rows(first, 7)
            with writing(writer) as conn:
                fencing.check(conn, 5, 1)
                insert_reports(conn, batch)
            written.extend(batch)
            first += 7

    def compact(compactor: history.ClusterCompactor) -> None:
        while not stop.is_set():
            compactor.run_once()

    threads = [threading.Thread(target=write)] + [threading.Thread(target=compact, args=(c,)) for c in compactors]
    for thread in threads:
        thread.start()
    time.sleep(3.0)
    stop.set()
    for thread in threads:
        thread.join()
    for _ in range(2):
        compactors[0].run_once()
    found = compacted_points(nodes[0])
    assert max(found.values()) == 1  # no datapoint in two segments
    assert found == expected(written)
    assert len(written) > 100
    for engine in (writer, *nodes):
        engine.dispose()
