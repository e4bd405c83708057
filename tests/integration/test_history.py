"""Columnar history on a real SQLite file and a real PostgreSQL: compaction never loses a datapoint.

Rows are compacted in several runs and segments; read_series must return exactly the numeric
datapoints of metric_values in the range — compacted or not yet — and nothing else.
"""

from __future__ import annotations


import numpy as np
import orjson
import sqlalchemy as sa

from iotdefender.store import history
from iotdefender.store.database import writing
from iotdefender.store.metric_values import RetainedReport, insert_reports
from iotdefender.store.partition_selection import PartitionSelection
from iotdefender.store.schema import metric_segments, metric_values


def reports(first: int, count: int) -> list[RetainedReport]:
    out = []
    for i in range(first, first + count):
        datapoints = {"aws:num-listening-tcp-ports": {"count": i % 5}, "cpu": {"number": i / 10},
                      "aws:listening-tcp-ports": {"ports": [22, i]}}
        if i % 3 == 0:
            datapoints.pop("cpu")  # not every report carries every metric
        out.append(RetainedReport(f"thing-{i % 4}", 1000.0 + i, datapoints))
    return out


def thing_number(thing: str) -> int:
    """The things' partitions here: thing-N is in partition N."""
    return int(thing.rsplit("-", 1)[1])


def as_set(points: history.SeriesPoints) -> set[tuple[str, float, float]]:
    return {(points.things[i], t, v) for i, t, v in
            zip(points.thing_index.tolist(), points.times.tolist(), points.values.tolist())}


def expected(rows: list[RetainedReport], series: str, start: float, end: float) -> set[tuple[str, float, float]]:
    out = set()
    for r in rows:
        value = r.datapoints.get(series)
        if value is not None and start <= r.ts <= end:
            out.add((r.thing_name, r.ts, float(value.get("count", value.get("number")))))
    return out


def test_segments_plus_tail_equal_the_rows(engine, monkeypatch):
    monkeypatch.setattr(history, "ROWS_PER_SEGMENT", 7)
    rows = reports(0, 30)
    with writing(engine) as conn:
        insert_reports(conn, rows)
        horizon = history.max_row_id(conn)
    assert history.compact_until(engine, horizon - 5) == 25  # the last rows stay in the tail
    more = reports(30, 10)
    with writing(engine) as conn:
        insert_reports(conn, more)
    everything = rows + more
    with engine.connect() as conn:
        for series in ("aws:num-listening-tcp-ports", "cpu"):
            for start, end in ((0, 1e9), (1010.0, 1032.0), (1036.0, 1036.0)):
                got = history.read_series(conn, series, start, end)
                assert len(got) == len(as_set(got))  # no datapoint twice
                assert as_set(got) == expected(everything, series, start, end), (series, start, end)
        assert history.read_series(conn, "aws:listening-tcp-ports", 0, 1e9).thing_index.size == 0  # lists: no
        assert history.series_present(conn, 0, 1e9) == {"aws:num-listening-tcp-ports", "cpu"}
    assert history.compact_until(engine, horizon + 10) == 15
    with engine.connect() as conn:
        got = history.read_series(conn, "cpu", 0, 1e9)
        assert as_set(got) == expected(everything, "cpu", 0, 1e9)
        assert np.all(np.isin(got.things, [f"thing-{i}" for i in range(4)]))
    with writing(engine) as conn:
        assert history.delete_segments_older_than(conn, 2000.0) > 0
    with engine.connect() as conn:
        assert len(history.read_series(conn, "cpu", 0, 1e9)) == 0


def test_read_many_reads_several_series_and_selects_things(engine, monkeypatch):
    """What a restart refills its windows from: several series at once, segments and rows alike,
    only the selected things' datapoints."""
    monkeypatch.setattr(history, "ROWS_PER_SEGMENT", 7)
    rows = reports(0, 30)
    with writing(engine) as conn:
        insert_reports(conn, rows[:20])
    history.compact_until(engine, 14)  # some in segments, the rest still rows
    with writing(engine) as conn:
        insert_reports(conn, rows[20:])
    read_things_1_and_2(engine, rows, 1003.0, 1026.0)


def read_things_1_and_2(engine, rows: list[RetainedReport], start: float, end: float) -> None:  # type: ignore[no-untyped-def]
    """read_many of partitions 1 and 2 (thing-1, thing-2) gives exactly their datapoints."""
    wanted = ("aws:num-listening-tcp-ports", "cpu")
    selected = {"thing-1", "thing-2"}
    with engine.connect() as conn:
        found = history.read_many(conn, wanted, start, end, PartitionSelection(frozenset({1, 2}), thing_number))
    for series in wanted:
        assert as_set(found[series]) == {p for p in expected(rows, series, start, end) if p[0] in selected}
        # Only the selected things' names are carried (a segment lists every device it holds).
        assert set(found[series].things) == selected, found[series].things


def test_a_takeover_reads_only_its_partitions_segments_and_the_whole_fleets(engine, monkeypatch):
    """Compacted per partition (a cluster's compactor), a read of some partitions takes only their
    segments, and the segments of the whole fleet written before partitions were kept (or by a node
    of that release), picking their things; the rows not compacted yet too. The other partitions'
    segments are made unreadable: reading one of them would fail."""
    monkeypatch.setattr(history, "ROWS_PER_SEGMENT", 7)
    rows = reports(0, 40)
    with writing(engine) as conn:
        insert_reports(conn, rows[:12])
    history.compact_until(engine, 12)  # a release before partitions: segments of the whole fleet
    with writing(engine) as conn:
        insert_reports(conn, rows[12:])
    history.compact_until(engine, 34, thing_number)  # the cluster's compactor; the last rows stay in the tail
    with engine.connect() as conn:
        kept = conn.execute(sa.select(metric_segments.c.partition, metric_segments.c.things)).all()
    assert {partition for partition, _ in kept} == {None, 0, 1, 2, 3}
    for partition, names in kept:
        if partition is not None:  # a segment of one partition lists only its things
            assert {thing_number(name) for name in orjson.loads(names)} == {partition}
    with writing(engine) as conn:
        conn.execute(metric_segments.update().where(metric_segments.c.partition.in_([0, 3]))
                     .values(things=b"not json", thing_index=b"", times=b"", vals=b""))
    read_things_1_and_2(engine, rows, 1000.0, 1040.0)


def test_a_takeover_leaves_the_other_partitions_rows_not_compacted_yet_in_the_server(engine):
    """Rows carry their thing's partition (when written with it): the read of some partitions asks
    the server for theirs, and for rows of no recorded partition, picked by thing. One row of a
    selected thing is recorded under another partition here: a read that filtered only by thing
    would return it."""
    rows = reports(0, 20)
    with writing(engine) as conn:
        insert_reports(conn, rows[:12], thing_number)
        insert_reports(conn, rows[12:])  # a node of the release before: no partition
        stored = dict(conn.execute(sa.select(metric_values.c.id, metric_values.c.partition)).all())
        assert list(stored.values()).count(None) == 8
        mislabelled = conn.execute(sa.select(sa.func.min(metric_values.c.id))
                                   .where(metric_values.c.thing_name == "thing-1")).scalar_one()
        conn.execute(metric_values.update().where(metric_values.c.id == mislabelled).values(partition=0))
    moved = next(r for r in rows if r.thing_name == "thing-1")
    with engine.connect() as conn:
        found = history.read_many(conn, ("cpu", "aws:num-listening-tcp-ports"), 0.0, 1e9,
                                  PartitionSelection(frozenset({1, 2}), thing_number))
    for series, points in found.items():
        assert as_set(points) == {p for p in expected([r for r in rows if r is not moved], series, 0.0, 1e9)
                                  if p[0] in {"thing-1", "thing-2"}}
