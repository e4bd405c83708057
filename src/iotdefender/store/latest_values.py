"""Each device's latest datapoint of a numeric series, kept folded so that "the fleet now" is cheap.

The console's metrics page shows the distribution of each device's latest value over a range of up
to 14 days. Read from the segments (store/history.py), that is every datapoint of the range: at
100,000 devices a week is 200 million datapoints, gigabytes decoded on an API thread of the service
process, which ran out of memory. Here the compactor's segments are folded, series by series, into
one row per series holding each device's latest (time, value) up to a segment id (``refresh``,
after compaction, in bounded steps). A reader (``read_latest``) takes that row, folds the segments
written after it and the rows not compacted yet, and keeps the devices whose latest datapoint is at
or after the range's start.

That is the newest value of every device with a datapoint in the range (which ends now; a report
that arrives while the page is read counts too), whatever state the table is in: behind, empty, or
not written by an older release. (SQLite gives a new row the highest id + 1: once retention deleted
the newest segments, new ones would take ids the table reached already. Retention moves the
table's segment ids back with its delete: ``history.delete_segments_older_than``.) A device whose newest
datapoint is older than the series' oldest retained segment has no datapoint left in the history,
and is dropped. The cost: a row is rewritten whole, about as many bytes as its devices' datapoints
since the last write (``LatestValues._due``), so only the series the console read within a week
(or first seen within a week) are kept folded; the others are emptied, and their first read folds
the segments itself (slower, in the same bounded memory) and marks them again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from iotdefender.store.advisory import LATEST_VALUES, run_alone
from iotdefender.store.database import writing
from iotdefender.store.history import SeriesPoints, last_compacted_id, uncompacted_points
from iotdefender.store.schema import metric_latest, metric_segments

_CURSOR = ""  # the row keeping the highest segment id whose series were looked for
# The first refresh after an upgrade meets the whole retained history (hundreds of millions of
# datapoints at 100,000 devices): it is folded in steps of this many datapoints (about a second
# each), each written, for at most the budget per refresh (the compaction thread's), the rest at
# the next ones.
POINTS_PER_STEP = 2_000_000
REFRESH_BUDGET_S = 10.0
# A series' row is kept folded while the console read it (or the row was made) within this long;
# then it is emptied and left until read again. Every row rewritten costs about as many bytes as
# its series' datapoints (``_due``): at 10M devices, all series kept folded doubled the history's
# writes, for series no one looked at. A read marks its row at most this often.
KEEP_FOLDED_S = 7 * 86400.0
MARK_READ_EVERY_S = 3600.0
_SEGMENTS_PER_READ = 100  # segments fetched at once (~50,000 datapoints each at most)


@dataclass
class Latest:
    """Each device's latest (time, value): parallel arrays over ``names``."""

    names: list[str] = field(default_factory=list)
    times: np.ndarray = field(default_factory=lambda: np.empty(0))
    values: np.ndarray = field(default_factory=lambda: np.empty(0))
    _positions: dict[str, int] = field(default_factory=dict)
    _last_names: list[str] | None = None  # the names list folded last, and its positions
    _last_remap: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __post_init__(self) -> None:
        self._positions = {name: i for i, name in enumerate(self.names)}

    def fold(self, points: SeriesPoints) -> None:
        """Take the newer of each device's kept datapoint and its latest in ``points``; of datapoints
        at the same time the later one wins, as in ``console.fleet.latest_per_thing``."""
        if not len(points):
            return
        positions = self._positions
        if points.things is self._last_names:  # segments of a stable fleet list the same devices
            remap = self._last_remap
        else:
            remap = np.fromiter((positions.setdefault(name, len(positions)) for name in points.things),
                                dtype=np.int64, count=len(points.things))
            self._last_names, self._last_remap = points.things, remap
        if len(positions) > len(self.names):
            self.names.extend(list(positions)[len(self.names):])
            grown = len(positions) - len(self.times)
            self.times = np.concatenate((self.times, np.full(grown, -np.inf)))
            self.values = np.concatenate((self.values, np.full(grown, np.nan)))
        device = remap[points.thing_index]
        order = np.lexsort((points.times, device))  # by device, then time; ties keep their order
        last = np.ones(len(order), dtype=bool)
        last[:-1] = device[order][1:] != device[order][:-1]
        chosen = order[last]
        where, times, values = device[chosen], points.times[chosen], points.values[chosen]
        newer = times >= self.times[where]
        self.times[where[newer]] = times[newer]
        self.values[where[newer]] = values[newer]

    def within(self, start: float, end: float) -> tuple[list[str], np.ndarray]:
        """The devices whose latest datapoint lies in [start, end], and those values."""
        keep = np.flatnonzero((self.times >= start) & (self.times <= end))
        return [self.names[i] for i in keep.tolist()], self.values[keep]

    def without_older_than(self, cutoff: float) -> Latest:
        keep = np.flatnonzero(self.times >= cutoff)
        if len(keep) == len(self.names):
            return self
        return Latest([self.names[i] for i in keep.tolist()], self.times[keep], self.values[keep])

    def encoded(self) -> dict[str, bytes]:
        return {"things": orjson.dumps(self.names), "times": self.times.astype("<f8").tobytes(),
                "vals": self.values.astype("<f8").tobytes()}


def _decoded(things: bytes, times: bytes, vals: bytes) -> Latest:
    return Latest(orjson.loads(things), np.frombuffer(times, dtype="<f8").copy(),
                  np.frombuffer(vals, dtype="<f8").copy())


class _Segments:
    """Segments' points, a names list decoded once while the segments that follow list the same."""

    def __init__(self) -> None:
        self._blob = b""
        self._names: list[str] = []

    def points(self, things: bytes, thing_index: bytes, times: bytes, vals: bytes) -> SeriesPoints:
        if things != self._blob:
            self._blob, self._names = things, orjson.loads(things)
        return SeriesPoints(self._names, np.frombuffer(thing_index, dtype="<i4"),
                            np.frombuffer(times, dtype="<f8"), np.frombuffer(vals, dtype="<f8"))


def _kept(conn: Connection, series: str) -> tuple[Latest, int]:
    """The series' folded row and the segment id it reaches (an empty fold at 0 when there is none)."""
    row = conn.execute(sa.select(metric_latest.c.up_to_segment, metric_latest.c.things, metric_latest.c.times,
                                 metric_latest.c.vals).where(metric_latest.c.series == series)).first()
    if row is None:
        return Latest(), 0
    return _decoded(row.things, row.times, row.vals), int(row.up_to_segment)


def _segments_after(series: str, after_id: int) -> sa.Select:
    return sa.select(metric_segments.c.id, metric_segments.c.points, metric_segments.c.things,
                     metric_segments.c.thing_index, metric_segments.c.times, metric_segments.c.vals).where(
        metric_segments.c.series == series, metric_segments.c.id > after_id).order_by(metric_segments.c.id)


def _oldest_retained(conn: Connection, series: str) -> float | None:
    """The time of the series' oldest datapoint still held in a segment (retention deletes the
    older ones): what the fold holds from before it has no datapoint left in the history."""
    oldest = conn.execute(sa.select(sa.func.min(metric_segments.c.min_ts)).where(metric_segments.c.series == series)
                          ).scalar()
    return None if oldest is None else float(oldest)


def read_latest(conn: Connection, series: str, since: float) -> tuple[list[str], np.ndarray]:
    """Each device's latest value of ``series``, for the devices with a datapoint at or after
    ``since``; memory bounded by the devices, not the datapoints.

    No end: a range that ends now ends before the reports that arrive while the page is read, and
    a device whose newest datapoint came after the end would have been left out of the fold (its
    newest is what the fold keeps), though it had datapoints in the range."""
    compacted = last_compacted_id(conn)  # before the segments: they then cover every row up to it
    latest, up_to = _kept(conn, series)
    oldest = _oldest_retained(conn, series)  # retention may have passed since the row was written
    latest = Latest() if oldest is None else latest.without_older_than(oldest)
    query = _segments_after(series, up_to).where(metric_segments.c.max_ts >= since).execution_options(
        stream_results=True, yield_per=_SEGMENTS_PER_READ)
    # Streamed: a table far behind (just upgraded) leaves the whole range to fold here, one
    # fetch at a time, each decoded and folded before the next.
    segments = _Segments()
    for row in conn.execute(query):
        latest.fold(segments.points(row.things, row.thing_index, row.times, row.vals))
    latest.fold(uncompacted_points(conn, compacted, series, since, float("inf")))
    return latest.within(since, float("inf"))


def mark_read(engine: Engine, series: str, now: float) -> None:
    """The console read ``series``: its row is kept folded for ``KEEP_FOLDED_S`` more (a write at
    most every ``MARK_READ_EVERY_S``). A series without a row gets one at the next refresh."""
    with engine.connect() as conn:
        read_at = conn.execute(sa.select(metric_latest.c.read_at).where(metric_latest.c.series == series)).first()
    if read_at is None or (read_at[0] is not None and read_at[0] >= now - MARK_READ_EVERY_S):
        return
    with writing(engine) as conn:
        conn.execute(metric_latest.update().where(metric_latest.c.series == series).values(read_at=now))


class LatestValues:
    """Keeps ``metric_latest`` folded up to the newest segments (``refresh``, after each compaction
    run). In a cluster one node refreshes at a time (a PostgreSQL advisory lock), and a row is
    written only over the one it was folded from, so a refresh that raced another is dropped."""

    def __init__(self, engine: Engine, points_per_step: int = POINTS_PER_STEP, budget_s: float = REFRESH_BUDGET_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._engine = engine
        self._points_per_step = points_per_step
        self._budget_s = budget_s
        self._next = 0  # the series the next refresh starts from

    def refresh(self) -> int:
        """Fold each due series' new segments, a step (one write) at a time, until caught up or the
        time budget is spent (a step for each, at least); returns the series folded."""
        return run_alone(self._engine, LATEST_VALUES, self._refresh) or 0

    def _refresh(self) -> int:
        now = self._clock()
        self._note_new_series(now)
        self._empty_unread(now)
        with self._engine.connect() as conn:
            every = sorted(s for (s,) in conn.execute(sa.select(metric_latest.c.series).where(
                metric_latest.c.series != _CURSOR, metric_latest.c.read_at >= now - KEEP_FOLDED_S)))
        if not every:
            return 0
        # Round robin from where the last refresh stopped, so that a series behind the others'
        # backlog gets its turn; the budget holds across series (a step may pass it once).
        first = self._next % len(every)
        deadline = time.monotonic() + self._budget_s
        folded = 0
        for turn in range(len(every)):
            series = every[(first + turn) % len(every)]
            if folded and time.monotonic() > deadline:
                self._next = first + turn
                return folded
            if not self._due(series):
                continue
            folded += 1
            while self._step(series) and time.monotonic() <= deadline:
                pass
        self._next = first
        return folded

    def _empty_unread(self, now: float) -> None:
        """Rows of releases before ``read_at`` count as read now; rows not read for
        ``KEEP_FOLDED_S`` are emptied, once (a read folds the segments itself, and marks the row)."""
        unmarked = metric_latest.c.read_at.is_(None)
        lapsed = sa.and_(metric_latest.c.series != _CURSOR, metric_latest.c.read_at < now - KEEP_FOLDED_S,
                         metric_latest.c.up_to_segment > 0)
        with self._engine.connect() as conn:  # read first: most refreshes have nothing to write here
            if conn.execute(sa.select(sa.func.count()).where(sa.or_(unmarked, lapsed))).scalar() == 0:
                return
        with writing(self._engine) as conn:
            conn.execute(metric_latest.update().where(unmarked).values(read_at=now))
            conn.execute(metric_latest.update().where(lapsed).values(up_to_segment=0, **Latest().encoded()))

    def _note_new_series(self, now: float) -> None:
        """Series with segments after the cursor get a row (empty at first, as read now: a new
        series is kept folded for a week unread); the cursor moves on."""
        with self._engine.connect() as conn:
            cursor = conn.execute(sa.select(metric_latest.c.up_to_segment)
                                  .where(metric_latest.c.series == _CURSOR)).scalar()
            top = conn.execute(sa.select(sa.func.max(metric_segments.c.id))).scalar()
            if top is None or (cursor is not None and top <= cursor):
                return
            found = {s for (s,) in conn.execute(sa.select(metric_segments.c.series).where(
                metric_segments.c.id > (cursor or 0), metric_segments.c.id <= top).distinct())}
            known = {s for (s,) in conn.execute(sa.select(metric_latest.c.series))}
        empty = Latest().encoded()
        with writing(self._engine) as conn:
            if found - known:
                conn.execute(metric_latest.insert(), [{"series": s, "up_to_segment": 0, "read_at": now, **empty}
                                                      for s in sorted(found - known)])
            moved = conn.execute(metric_latest.update().where(metric_latest.c.series == _CURSOR)
                                 .values(up_to_segment=top)).rowcount
            if not moved:
                conn.execute(metric_latest.insert().values(series=_CURSOR, up_to_segment=top, read_at=now, **empty))

    def _due(self, series: str) -> bool:
        """Whether the series' segments after its row hold at least as many datapoints as the row
        has devices: a row is rewritten whole, so rewriting it no more often than that keeps the
        writes within the datapoints' own size, and a reader's fold after it within about one
        datapoint per device (a fleet reporting every 5 minutes is refreshed every 5 minutes)."""
        with self._engine.connect() as conn:
            up_to, size = conn.execute(sa.select(metric_latest.c.up_to_segment, sa.func.length(metric_latest.c.times))
                                       .where(metric_latest.c.series == series)).one()
            pending = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(metric_segments.c.points), 0)).where(
                metric_segments.c.series == series, metric_segments.c.id > up_to)).scalar()
        return int(pending or 0) > 0 and int(pending or 0) >= int(size or 0) // 8

    def _step(self, series: str) -> bool:
        """Fold up to ``points_per_step`` datapoints of the series' new segments and write the row;
        returns whether segments are left after them."""
        with self._engine.connect() as conn:
            latest, up_to = _kept(conn, series)
        reached, points, more = up_to, 0, True
        segments = _Segments()
        while more and points < self._points_per_step:
            with self._engine.connect() as conn:  # one statement per read: no transaction left idle
                rows = conn.execute(_segments_after(series, reached).limit(_SEGMENTS_PER_READ)).all()
            more = len(rows) == _SEGMENTS_PER_READ
            for k, row in enumerate(rows):
                latest.fold(segments.points(row.things, row.thing_index, row.times, row.vals))
                reached, points = int(row.id), points + int(row.points)
                if points >= self._points_per_step:
                    more = more or k + 1 < len(rows)
                    break
        if reached == up_to:
            return False
        with self._engine.connect() as conn:
            oldest = _oldest_retained(conn, series)
        if oldest is not None:
            latest = latest.without_older_than(oldest)
        with writing(self._engine) as conn:
            written = conn.execute(metric_latest.update().where(
                metric_latest.c.series == series, metric_latest.c.up_to_segment == up_to).values(
                up_to_segment=reached, **latest.encoded())).rowcount
        return bool(written) and more
