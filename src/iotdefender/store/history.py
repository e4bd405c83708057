"""Retained history read back in bulk: columnar segments of numeric series, and reports in time order.

metric_values keeps one JSON document per report, which is right for ingest (one index update per
report) and for ListMetricValues (one thing, one range), and wrong for a backtest that wants one
metric of every device for a week: decoding 20 million documents takes minutes. ``compact_until`` copies
the numeric datapoints (``count`` and ``number``) of new rows into ``metric_segments``, packed
arrays per series; ``read_series`` returns the segments plus the rows not compacted yet, so a
reader never misses a datapoint and never waits for the compactor.

Rows are compacted by id, up to an id seen one compaction run earlier (a ``Horizon``): a transaction
that took an id but had not committed when the previous run looked (PostgreSQL sequences hand out
ids before commit) has committed by the next run. Anything after that id is read from metric_values.
On PostgreSQL that is not left to time: the horizon also records the transactions of the database
that held a transaction id when it was read (``pg_stat_activity.backend_xid``), and is used only
once all of them have ended. A cluster's writers of metric_values (a partition batch, a cloud
window) hold their transaction id before they take a row id: they lock their partitions' fence
rows (``FOR UPDATE``) first. So a row id at or below the horizon belongs to a transaction that had
an id then, and once those have ended no row below the horizon can still appear. (Every node must
see the others' sessions in ``pg_stat_activity``: the same database role, or ``pg_read_all_stats``.) (The single box has one
writer at a time, whose uncommitted ids are all above what was committed.)
A paused detect node (a cluster's stall, a long commit) therefore delays compaction instead of
having its rows skipped for good. In a cluster one compactor runs at a time (``ClusterCompactor``:
a PostgreSQL advisory lock), and the cursor row is locked while a chunk is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from iotdefender.metrics_catalog import AWAY_SERIES, SIZE_METRICS, is_cloud_side, is_smallest_series, smallest_series
from iotdefender.store.advisory import HISTORY_COMPACTION, run_alone
from iotdefender.store.database import writing
from iotdefender.store.partition_selection import PartitionSelection, once_per_thing
from iotdefender.store.schema import history_compaction, metric_latest, metric_segments, metric_values

_COMPACTOR = "metric_segments"
# Rows per segment: a chunk's decoding happens outside the write lock, its insert inside it.
ROWS_PER_SEGMENT = 50_000
# Names lists of partitions' segments a read keeps decoded: a chunk's worth at 64 partitions and a
# few series (each list is ~1/64 of a chunk's devices, so this is bounded whatever the fleet).
_RECENT_NAMES = 512


@dataclass
class SeriesPoints:
    """Every datapoint of one numeric series: parallel arrays, unsorted."""

    things: list[str]
    thing_index: np.ndarray  # int32 index into things
    times: np.ndarray  # float64 epoch seconds
    values: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.times)


def _scalar(value: object) -> float | None:
    if isinstance(value, dict):
        for key in ("count", "number"):
            number = value.get(key)
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                return float(number)
    return None


def last_compacted_id(conn: Connection, lock: bool = False) -> int:
    query = sa.select(history_compaction.c.last_row_id).where(history_compaction.c.name == _COMPACTOR)
    found = conn.execute(query.with_for_update() if lock else query).scalar()
    return int(found or 0)


@dataclass(frozen=True)
class Horizon:
    """The highest row id seen by a compaction run and, on PostgreSQL, the transactions of this
    database that had a transaction id and had not ended when it was read (None on SQLite: one
    writer, which commits before the read)."""

    row_id: int
    running: frozenset[str] | None = None


_RUNNING = sa.text("SELECT backend_xid::text FROM pg_stat_activity "
                   "WHERE datname = current_database() AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()")


def observe_horizon(conn: Connection) -> Horizon:
    if conn.dialect.name != "postgresql":
        return Horizon(max_row_id(conn))
    row_id = max_row_id(conn)
    # Read after the row id: a transaction holding an id at or below it is running still, or has
    # committed (its rows are then visible to the next run).
    return Horizon(row_id, frozenset(conn.execute(_RUNNING).scalars()))


def horizon_settled(conn: Connection, horizon: Horizon) -> bool:
    """Whether every transaction that could hold a row id at or below the horizon has ended."""
    if not horizon.running:
        return True
    return not horizon.running & set(conn.execute(_RUNNING).scalars())


def max_row_id(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.max(metric_values.c.id))).scalar() or 0)


def _set_compacted(conn: Connection, row_id: int) -> None:
    updated = conn.execute(history_compaction.update().where(history_compaction.c.name == _COMPACTOR)
                           .values(last_row_id=row_id)).rowcount
    if not updated:
        conn.execute(history_compaction.insert().values(name=_COMPACTOR, last_row_id=row_id))


#: (series, partition or None for the whole fleet, its points): one segment to write.
Segment = tuple[str, int | None, SeriesPoints]


def write_segment(conn: Connection, series: str, points: SeriesPoints, partition: int | None = None) -> None:
    """Store one packed segment (also used by bench/backtest.py to lay down a week quickly); with
    ``partition``, every thing in it is of that partition (cluster mode)."""
    write_segments(conn, [(series, partition, points)])


def write_segments(conn: Connection, segments: Iterable[Segment]) -> None:
    """Store packed segments in one executemany: a cluster's chunk is a segment per series and
    partition (~128 at two series), and a statement each cost ~1 ms of SQLAlchemy and a round trip."""
    rows = [{"series": series, "partition": partition, "min_ts": float(points.times.min()),
             "max_ts": float(points.times.max()), "points": len(points), "things": orjson.dumps(points.things),
             "thing_index": points.thing_index.astype("<i4").tobytes(), "times": points.times.astype("<f8").tobytes(),
             "vals": points.values.astype("<f8").tobytes()}
            for series, partition, points in segments if len(points)]
    if rows:
        conn.execute(metric_segments.insert(), rows)


def _columns(rows: list[tuple[str, float, Any]]) -> dict[str, SeriesPoints]:
    """Explode report rows into per-series arrays of their numeric datapoints (the document is JSON
    text on SQLite, already decoded on PostgreSQL)."""
    names: dict[str, int] = {}
    builders: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for thing, ts, document in rows:
        datapoints = orjson.loads(document) if isinstance(document, (str, bytes)) else document
        index = names.setdefault(thing, len(names))
        for series, value in datapoints.items():
            number = _scalar(value)
            if number is None:
                continue
            columns = builders.get(series)
            if columns is None:
                columns = builders[series] = ([], [], [])
            columns[0].append(index)
            columns[1].append(ts)
            columns[2].append(number)
    things = list(names)
    return {series: SeriesPoints(things, np.asarray(i, dtype=np.int32), np.asarray(t, dtype=np.float64),
                                 np.asarray(v, dtype=np.float64))
            for series, (i, t, v) in builders.items()}


def _raw_rows(conn: Connection, after_id: int, up_to_id: int | None, limit: int | None = None,
              things: PartitionSelection | None = None) -> list[tuple[int, str, float, object]]:
    # The JSON column is read as text and decoded here with orjson: several times faster than
    # the dialects' JSON result processing for wide scans. With ``things``, the other partitions'
    # rows stay in the server (rows of no recorded partition come, and are picked by thing).
    text = sa.cast(metric_values.c.datapoints, sa.Text)
    query = sa.select(metric_values.c.id, metric_values.c.thing_name, metric_values.c.ts, text).where(
        metric_values.c.id > after_id)
    if things is not None:
        query = query.where(things.where(metric_values.c.partition))
    if up_to_id is not None:
        query = query.where(metric_values.c.id <= up_to_id)
    query = query.order_by(metric_values.c.id)
    if limit is not None:
        query = query.limit(limit)
    return [tuple(r) for r in conn.execute(query)]


def uncompacted_points(conn: Connection, after_id: int, series: str, start: float, end: float) -> SeriesPoints:
    """The datapoints of ``series`` with start <= ts <= end in the rows after ``after_id`` (a
    ``last_compacted_id`` read before the segments it completes)."""
    rows = [(t, ts, d) for _, t, ts, d in _raw_rows(conn, after_id, None) if start <= ts <= end]
    found = _columns(rows).get(series) if rows else None
    return found if found is not None else SeriesPoints([], np.empty(0, np.int32), np.empty(0), np.empty(0))


def _by_partition(columns: dict[str, SeriesPoints], partition_of: Callable[[str], int] | None) -> list[Segment]:
    """A chunk's series as segments: one per series, or with ``partition_of`` one per series and
    partition, each listing only its own things (renumbered). The partition of each of the chunk's
    things is computed once (the series share one names list), and the split is numpy's."""
    if partition_of is None:
        return [(series, None, points) for series, points in columns.items()]
    segments: list[Segment] = []
    of_name: dict[int, np.ndarray] = {}  # id(names list) -> each name's partition
    for series, points in columns.items():
        partitions = of_name.get(id(points.things))
        if partitions is None:
            partitions = of_name[id(points.things)] = np.fromiter(
                (partition_of(name) for name in points.things), dtype=np.int32, count=len(points.things))
        by_point = partitions[points.thing_index]
        order = np.argsort(by_point, kind="stable")  # each partition's points keep their order
        cuts = np.flatnonzero(np.diff(by_point[order])) + 1
        for group in np.split(order, cuts):
            if not len(group):
                continue
            kept, index = np.unique(points.thing_index[group], return_inverse=True)
            names = [points.things[i] for i in kept.tolist()]
            segments.append((series, int(by_point[group[0]]), SeriesPoints(
                names, index.astype(np.int32), points.times[group], points.values[group])))
    return segments


def compact_until(engine: Engine, up_to_id: int, partition_of: Callable[[str], int] | None = None) -> int:
    """Copy the numeric datapoints of rows up to ``up_to_id`` into segments; returns rows copied.
    With ``partition_of`` (cluster mode), one segment per series and partition of each chunk, so a
    takeover reads its partitions' segments only (store/partition_selection.py).

    Rows are read and decoded outside any write transaction (the decoding is most of the work);
    each chunk then takes the writer only to insert its segments and advance the cursor, so
    compaction never holds up ingest's transactions for more than a few milliseconds. If another
    compactor moved the cursor meanwhile, the chunk is dropped and read again.
    """
    total = 0
    while True:
        with engine.connect() as conn:
            after = last_compacted_id(conn)
            if up_to_id <= after:
                return total
            rows = _raw_rows(conn, after, up_to_id, ROWS_PER_SEGMENT)
        segments = _by_partition(_columns([(t, ts, d) for _, t, ts, d in rows]), partition_of)
        reached = rows[-1][0] if len(rows) == ROWS_PER_SEGMENT else up_to_id
        with writing(engine) as conn:
            if last_compacted_id(conn, lock=True) != after:
                continue
            write_segments(conn, segments)
            _set_compacted(conn, reached)
        total += len(rows)


class Compactor:
    """Compaction on a schedule: each run compacts up to the horizon seen by the run before, so rows
    of a transaction that had taken its id but not committed are never skipped; on PostgreSQL a
    horizon whose transactions have not all ended waits for a later run (module docstring)."""

    def __init__(self, engine: Engine, partition_of: Callable[[str], int] | None = None) -> None:
        self._engine = engine
        self._partition_of = partition_of  # segments per partition (cluster mode), or of the whole fleet
        self._horizon = Horizon(0)

    def run_once(self) -> int:
        with self._engine.connect() as conn:
            if not horizon_settled(conn, self._horizon):
                return 0  # kept: a newer horizon would wait for newer transactions too, and could starve
        copied = compact_until(self._engine, self._horizon.row_id, self._partition_of)
        with self._engine.connect() as conn:
            self._horizon = observe_horizon(conn)
        return copied


class ClusterCompactor(Compactor):
    """A cluster's compaction: every detect node runs one, one at a time across the cluster (a
    PostgreSQL advisory lock; a node killed mid-run frees it), so each row range is compacted once.
    A node that finds the lock held skips the run (its horizon stays, still a safe one). Segments
    are written per partition (``partition_of``: the cluster's), for the takeovers' reads."""

    def __init__(self, engine: Engine, partition_of: Callable[[str], int]) -> None:
        super().__init__(engine, partition_of)

    def run_once(self) -> int:
        return run_alone(self._engine, HISTORY_COMPACTION, super().run_once) or 0


def _selection(names: list[str], things: Callable[[str], bool]) -> tuple[list[str], np.ndarray]:
    """Of a segment's ``names``, those ``things`` selects, and each name's index in that shorter
    list (-1: not selected). A segment lists every device it holds a datapoint of (tens of
    thousands); carrying only the selected names keeps ``_merge`` from renumbering all of them in
    Python for every segment: a detect node taking one partition of 64 over read a fleet of
    100,000 devices' hour in 1.2 s, most of it renumbering names it then dropped."""
    kept = np.flatnonzero(np.fromiter((things(n) for n in names), dtype=bool, count=len(names)))
    renumbered = np.full(len(names), -1, dtype=np.int32)
    renumbered[kept] = np.arange(len(kept), dtype=np.int32)
    return [names[i] for i in kept.tolist()], renumbered


def _merge(parts: list[SeriesPoints]) -> SeriesPoints:
    names: dict[str, int] = {}
    indexes, times, values = [], [], []
    previous: list[str] | None = None
    remap = np.empty(0, dtype=np.int32)
    identity = False
    # Each names list's renumbering, by the list (parts hold them alive): a cluster's segments
    # alternate partitions, so the same list recurs, but never right after itself.
    remaps: dict[int, tuple[np.ndarray, bool]] = {}
    for part in parts:
        if part.things is not previous and part.things != previous:  # a stable fleet: the same list
            known = remaps.get(id(part.things))
            if known is None:
                if len(remaps) >= _RECENT_NAMES:
                    del remaps[next(iter(remaps))]
                remap = np.fromiter((names.setdefault(n, len(names)) for n in part.things), dtype=np.int32,
                                    count=len(part.things))
                known = remaps[id(part.things)] = (remap, bool(np.array_equal(remap, np.arange(len(remap)))))
            remap, identity = known
            previous = part.things
        indexes.append(part.thing_index if identity or not len(part.things) else remap[part.thing_index])
        times.append(part.times)
        values.append(part.values)
    if not parts:
        return SeriesPoints([], np.empty(0, np.int32), np.empty(0), np.empty(0))
    return SeriesPoints(list(names), np.concatenate(indexes), np.concatenate(times), np.concatenate(values))


def read_series(conn: Connection, series: str, start: float, end: float) -> SeriesPoints:
    """Every numeric datapoint of ``series`` with start <= ts <= end: segments, then the rows after them."""
    return read_many(conn, (series,), start, end)[series]


def read_many(conn: Connection, series: Iterable[str], start: float, end: float,
              things: PartitionSelection | None = None) -> dict[str, SeriesPoints]:
    """``read_series`` of several series, the rows not compacted yet read and decoded once for all;
    with ``things``, only the datapoints of the things of its partitions: their segments (and the
    whole fleet's segments, written before segments kept partitions, filtered by thing) and the
    rows not compacted yet (the others' not decoded)."""
    return fetch_many(conn, series, start, end, things).decoded()


@dataclass(frozen=True)
class Fetched:
    """What a read of several series took from the database, not decoded yet (``fetch_many``).

    The statements of a read run back to back and the decoding comes after, so a caller can end its
    transaction (leave the ``connect`` block) before decoding. Decoding a large read between two
    statements left the transaction idle for its duration, and PostgreSQL ends a session idle in a
    transaction for 30 s (store/database.py ``IDLE_IN_TRANSACTION_S``): the hour of a partition's
    share of 10M devices took longer than that to decode, and the read after it failed
    (``IdleInTransactionSessionTimeout``)."""

    wanted: list[str]
    start: float
    end: float
    things: PartitionSelection | None
    segments: list[Any]  # (series, partition, names blob, thing_index, times, vals), oldest first
    tail: list[tuple[int, str, float, object]]  # the rows not compacted yet

    def decoded(self, only: Iterable[str] | None = None) -> dict[str, SeriesPoints]:
        """Each wanted series' points (or only those of ``only``)."""
        start, end, things = self.start, self.end, self.things
        chosen_series = None if only is None else set(only)
        wanted = self.wanted if chosen_series is None else [name for name in self.wanted if name in chosen_series]
        parts: dict[str, list[SeriesPoints]] = {name: [] for name in wanted}
        names_blob, names, renumbered = b"", [], np.empty(0, dtype=np.int32)
        chosen: dict[bytes, Any] = {}  # names blob -> (the names ``things`` selects, each name's new index)
        recent: dict[bytes, list[str]] = {}  # the partitions' last names lists, decoded once (the same object)
        for name, partition, blob, thing_index, times, vals in self.segments:
            if name not in parts:
                continue
            whole = things is None or partition is not None  # every thing in it is wanted
            if things is not None and partition is None:  # a segment of the whole fleet: pick its things
                if blob not in chosen:
                    chosen[blob] = _selection(orjson.loads(blob), things)
                names, renumbered = chosen[blob]
                names_blob = b""
            elif partition is not None:  # one list per partition and chunk, recurring in a stable fleet
                listed = recent.get(blob)
                if listed is None:
                    if len(recent) >= _RECENT_NAMES:
                        del recent[next(iter(recent))]
                    listed = recent[blob] = orjson.loads(blob)
                names = listed
            elif blob != names_blob:  # most segments of a stable fleet list the same devices: decode once
                names_blob, names = blob, orjson.loads(blob)
            part = SeriesPoints(names, np.frombuffer(thing_index, dtype="<i4"),
                                np.frombuffer(times, dtype="<f8"), np.frombuffer(vals, dtype="<f8"))
            keep = (part.times >= start) & (part.times <= end)
            if not whole:
                index = renumbered[part.thing_index]
                keep &= index >= 0
                part = SeriesPoints(names, index[keep], part.times[keep], part.values[keep])
            elif not keep.all():
                part = SeriesPoints(part.things, part.thing_index[keep], part.times[keep], part.values[keep])
            parts[name].append(part)
        picked = None if things is None else once_per_thing(things)  # a device has many rows: asked once
        tail = [(t, ts, d) for _, t, ts, d in self.tail
                if start <= ts <= end and (picked is None or picked(t))] if wanted else []
        if tail:
            columns = _columns(tail)
            for name in wanted:
                column = columns.get(name)
                if column is not None:
                    parts[name].append(column)
        return {name: _merge(found) for name, found in parts.items()}


def fetch_many(conn: Connection, series: Iterable[str], start: float, end: float,
               things: PartitionSelection | None = None) -> Fetched:
    """The statements of ``read_many``, back to back; ``Fetched.decoded`` does the rest."""
    wanted = list(dict.fromkeys(series))
    if not wanted:
        return Fetched(wanted, start, end, things, [], [])
    compacted = last_compacted_id(conn)
    query = sa.select(metric_segments.c.series, metric_segments.c.partition, metric_segments.c.things,
                      metric_segments.c.thing_index, metric_segments.c.times, metric_segments.c.vals).where(
        metric_segments.c.series.in_(wanted), metric_segments.c.max_ts >= start, metric_segments.c.min_ts <= end)
    if things is not None:
        query = query.where(things.where(metric_segments.c.partition))
    segments = conn.execute(query.order_by(metric_segments.c.min_ts, metric_segments.c.id)).all()
    return Fetched(wanted, start, end, things, list(segments), _raw_rows(conn, compacted, None, things=things))


# Message sizes stored by releases before the smallest message was kept (docs/cloud-metrics.md):
# a window without messages got a 0 in the largest's series, where today's live evaluation has no
# datapoint at all. Such a 0 is told from a window whose only messages were empty by the companion
# series: that window has its smallest (0) at the same time, an idle window of those releases none.
# Whatever judges stored history as live evaluation would (ML training, backtests) reads a size
# series through ``read_as_evaluated`` or ``report_as_evaluated``; what lists what was stored
# (ListMetricValues, the console's chart) reads it as it is.

def _idle_zero(largest: float | None, smallest: float | None) -> bool:
    """Is a window's stored largest message an older release's idle window (no datapoint today)?"""
    return largest == 0 and smallest is None


def _reads_largest_size(series: str) -> bool:
    return series.split("|", 1)[0] in SIZE_METRICS and not is_smallest_series(series)


def without_idle_zeros(points: SeriesPoints, smallest: Callable[[], SeriesPoints]) -> SeriesPoints:
    """A largest message size series without the 0s of idle windows of older releases; its companion
    series (``smallest``) is read only when there are 0s."""
    zero = points.values == 0
    if not zero.any():
        return points
    companion = smallest()
    empty = companion.values == 0  # a 0 largest has a 0 smallest, if it has one
    smallest_at = {(companion.things[i], t): 0.0 for i, t in zip(companion.thing_index[empty].tolist(),
                                                                  companion.times[empty].tolist())}
    rows = np.flatnonzero(zero)
    idle = [row for row, i, t, v in zip(rows.tolist(), points.thing_index[rows].tolist(),
                                        points.times[rows].tolist(), points.values[rows].tolist())
            if _idle_zero(v, smallest_at.get((points.things[i], t)))]
    if not idle:
        return points
    keep = np.ones(len(points), dtype=bool)
    keep[idle] = False
    return SeriesPoints(points.things, points.thing_index[keep], points.times[keep], points.values[keep])


def read_as_evaluated(conn: Connection, series: str, start: float, end: float) -> SeriesPoints:
    """``read_series`` as live evaluation has the datapoints today: a largest message size series
    without the 0s older releases stored for idle windows."""
    return as_evaluated(fetch_as_evaluated(conn, series, start, end), series)


def fetch_as_evaluated(conn: Connection, series: str, start: float, end: float) -> Fetched:
    """The statements of ``read_as_evaluated`` (with a size series, its companion's too, in the same
    statements); ``as_evaluated`` decodes, after the caller's transaction if it likes (``Fetched``)."""
    return fetch_many(conn, _evaluated_with(series), start, end)


def _evaluated_with(series: str) -> list[str]:
    """The series read to evaluate ``series`` as live evaluation does: a size series with its companion."""
    return [series, smallest_series(series)] if _reads_largest_size(series) else [series]


def as_evaluated(fetched: Fetched, series: str) -> SeriesPoints:
    """``read_as_evaluated`` of what ``fetch_as_evaluated`` fetched for ``series``."""
    points = fetched.decoded([series])[series]
    if not _reads_largest_size(series):
        return points
    return without_idle_zeros(points, lambda: fetched.decoded([smallest_series(series)])[smallest_series(series)])


def fetch_for_training(conn: Connection, series: str, start: float, end: float) -> Fetched:
    """The statements of ``fetch_as_evaluated``, and for a cloud-side series those of the windows
    its devices spent away (``metrics_catalog.AWAY_SERIES``); ``as_trained`` decodes."""
    wanted = _evaluated_with(series)
    return fetch_many(conn, wanted + [AWAY_SERIES] if is_cloud_side(series) else wanted, start, end)


def as_trained(fetched: Fetched, series: str) -> SeriesPoints:
    """What ML Detect learns from of what ``fetch_for_training`` fetched: the series as evaluated,
    without the datapoints of windows their device spent away. A fleet that went offline for
    longer than half the training period was learned as silent before: its 0s became the model's
    normal (docs/detection.md, "A device away is not behaving")."""
    points = as_evaluated(fetched, series)
    if AWAY_SERIES not in fetched.wanted or not len(points):
        return points
    return without_windows_away(points, fetched.decoded([AWAY_SERIES])[AWAY_SERIES])


def without_windows_away(points: SeriesPoints, away: SeriesPoints) -> SeriesPoints:
    """``points`` without those of a device at a time ``away`` has a datapoint of it. A window's
    series are written together, one row per device and window, so the times are the same floats.

    A pair (device, time) is a bit of a bitset: the device's index times the number of distinct
    times ``away`` has (window ends: a few thousand over 14 days) plus the time's rank among them
    (4,032 ends and 100,000 devices: 50 MB). Only the datapoints of devices ever away are looked
    up. 10,000 devices x 14 days of 5-minute windows (40.3M datapoints), on the shared 2 cores
    (bench/ml_away_windows.py): 0.5 s with one device away half the time, 0.9 s with a tenth of
    them, 7 s with all of them (then half the datapoints, which training no longer reads). A sort
    of the pairs took as long, and its memory grows with the marks (8 bytes each: 1.6 GB for
    100,000 devices away half the time, where the bitset is 50 MB)."""
    if not len(away) or not len(points):
        return points
    index = {name: i for i, name in enumerate(points.things)}
    away_index = np.fromiter((index.get(name, -1) for name in away.things), dtype=np.int64, count=len(away.things))
    thing = away_index[away.thing_index]
    known = thing >= 0
    thing, away_times = thing[known], away.times[known]
    if not len(thing):
        return points
    ends = np.unique(away_times)
    ever_away = np.zeros(len(points.things), dtype=bool)
    ever_away[thing] = True
    rows = np.flatnonzero(ever_away[points.thing_index])
    marks = thing * len(ends) + np.searchsorted(ends, away_times)
    bits = np.zeros(len(points.things) * len(ends) // 64 + 1, dtype=np.uint64)
    np.bitwise_or.at(bits, marks >> 6, np.left_shift(np.uint64(1), (marks & 63).astype(np.uint64)))
    times = points.times[rows]
    rank = np.searchsorted(ends, times)
    on_end = ends[np.minimum(rank, len(ends) - 1)] == times
    keys = points.thing_index[rows].astype(np.int64) * len(ends) + np.minimum(rank, len(ends) - 1)
    hit = on_end & ((bits[keys >> 6] >> (keys & 63).astype(np.uint64)) & np.uint64(1)).astype(bool)
    if not hit.any():
        return points
    keep = np.ones(len(points), dtype=bool)
    keep[rows[hit]] = False
    return SeriesPoints(points.things, points.thing_index[keep], points.times[keep], points.values[keep])


def report_as_evaluated(datapoints: dict[str, Any], sizes: Iterable[str]) -> dict[str, Any]:
    """One stored report's datapoints as live evaluation has them today: without the 0 older
    releases stored for an idle window in any of the largest message size series ``sizes``."""
    idle = [key for key in sizes if key in datapoints and _reads_largest_size(key)
            and _idle_zero(_scalar(datapoints[key]), _scalar(datapoints.get(smallest_series(key))))]
    if not idle:
        return datapoints
    return {key: value for key, value in datapoints.items() if key not in idle}


def datapoints_between(conn: Connection, series: str, start: float, end: float) -> int:
    """About how many datapoints of ``series`` a read of [start, end] decodes: the points of the
    segments that overlap it (some may lie outside) and the rows not compacted yet in it (all
    their series: an upper bound). Two index reads, nothing decoded."""
    segments = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(metric_segments.c.points), 0)).where(
        metric_segments.c.series == series, metric_segments.c.max_ts >= start,
        metric_segments.c.min_ts <= end)).scalar()
    rows = conn.execute(sa.select(sa.func.count()).select_from(metric_values).where(
        metric_values.c.id > last_compacted_id(conn), metric_values.c.ts >= start, metric_values.c.ts <= end)).scalar()
    return int(segments or 0) + int(rows or 0)


def count_reports(conn: Connection, start: float, end: float) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(metric_values)
                            .where(metric_values.c.ts >= start, metric_values.c.ts <= end)).scalar() or 0)


def iter_reports(conn: Connection, start: float, end: float, batch: int = 20_000
                 ) -> Iterator[list[tuple[str, float, dict]]]:
    """Reports with start <= ts <= end in (ts, id) order, in batches of decoded (thing, ts, datapoints)."""
    after: tuple[float, int] | None = None
    text = sa.cast(metric_values.c.datapoints, sa.Text)
    while True:
        query = sa.select(metric_values.c.id, metric_values.c.thing_name, metric_values.c.ts, text).where(
            metric_values.c.ts >= start, metric_values.c.ts <= end)
        if after is not None:
            query = query.where(sa.or_(metric_values.c.ts > after[0],
                                       sa.and_(metric_values.c.ts == after[0], metric_values.c.id > after[1])))
        rows = conn.execute(query.order_by(metric_values.c.ts, metric_values.c.id).limit(batch)).all()
        if not rows:
            return
        yield [(thing, ts, orjson.loads(document)) for _, thing, ts, document in rows]
        if len(rows) < batch:
            return
        after = (rows[-1][2], rows[-1][0])


def series_present(conn: Connection, start: float, end: float) -> set[str]:
    """Which numeric series have segments in the range (for the console's metric picker)."""
    query = sa.select(metric_segments.c.series).where(metric_segments.c.max_ts >= start,
                                                      metric_segments.c.min_ts <= end).distinct()
    return {s for (s,) in conn.execute(query)}


def delete_segments_older_than(conn: Connection, cutoff: float, batch: int = 500) -> int:
    ids = sa.select(metric_segments.c.id).where(metric_segments.c.max_ts < cutoff).limit(batch).scalar_subquery()
    deleted = conn.execute(metric_segments.delete().where(metric_segments.c.id.in_(ids))).rowcount
    _not_past(conn, metric_latest.update(), metric_latest.c.up_to_segment, metric_segments.c.id)
    return deleted


def compaction_cursor_not_past(conn: Connection) -> None:
    """After a delete of ``metric_values`` rows: the compaction cursor back to the highest row left."""
    _not_past(conn, history_compaction.update().where(history_compaction.c.name == _COMPACTOR),
              history_compaction.c.last_row_id, metric_values.c.id)


def _not_past(conn: Connection, update: sa.Update, cursor: Any, ids: Any) -> None:
    """Move a cursor over a table's ids back to its highest id left, in the transaction of a delete.

    SQLite gives a new row the highest id + 1 (no AUTOINCREMENT): once a delete took the newest rows
    (retention, after a silence as long as it), new rows take ids at or below a cursor that had
    passed them, and whatever reads only the ids after the cursor never sees them. No id between the
    highest left and the cursor exists any more, so the cursor loses nothing by coming back. (On
    PostgreSQL new ids pass every id ever given: the same statement changes nothing that matters.)"""
    highest = sa.select(sa.func.coalesce(sa.func.max(ids), 0)).scalar_subquery()
    conn.execute(update.where(cursor > highest).values({cursor.key: highest}))
