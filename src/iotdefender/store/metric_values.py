"""SQL for retained datapoints (ListMetricValues) and the last accepted report of each thing."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.metrics_catalog import series_key  # noqa: F401  (re-exported for ListMetricValues)
from iotdefender.store.history import compaction_cursor_not_past
from iotdefender.store.partition_selection import once_per_thing
from iotdefender.store.rows import insert_many, name_among, names_in_chunks, upsert_many
from iotdefender.store.schema import metric_values, thing_report_state


@dataclass(frozen=True)
class RetainedReport:
    """The retained datapoints of one report (or cloud-side window) of one thing."""

    thing_name: str
    ts: float
    datapoints: dict[str, dict[str, Any]]  # series key -> MetricValue


def insert_reports(conn: Connection, reports: Sequence[RetainedReport],
                   partition_of: Callable[[str], int] | None = None) -> None:
    """The hot path: one row per report, one DBAPI executemany, values pre-encoded by orjson; with
    ``partition_of``, each row with its thing's partition (a takeover reads the rows not compacted
    yet by partition: store/history.py).

    SQLAlchemy's per-row parameter processing cost about 30 µs a row here (py-spy on
    bench/pipeline.py); the driver's executemany with ready tuples is several times cheaper, and
    the statement is the same plain INSERT on SQLite and PostgreSQL.
    """
    partition = once_per_thing(partition_of) if partition_of is not None else None
    insert_many(conn, metric_values, ("thing_name", "ts", "datapoints", "partition"),
                [(r.thing_name, r.ts, orjson.dumps(r.datapoints).decode(),
                  None if partition is None else partition(r.thing_name)) for r in reports])


def upsert_report_states(conn: Connection, states: Iterable[tuple[str, int, float]]) -> None:
    """The last report id and time of each thing (one row a thing), on every batch: the driver's
    executemany with ready tuples, as ``insert_reports``."""
    upsert_many(conn, thing_report_state, "thing_name", ("thing_name", "last_report_id", "last_report_at"),
                list(states))


def load_report_states(conn: Connection, things: Iterable[str] | None = None) -> dict[str, tuple[int, float]]:
    """The last stored report id and time of every thing, or of each of ``things`` that has one.

    The things are asked in one array parameter (``rows.name_among``): a detect node asks for every
    thing of each transaction, and a broker node for every report it waits on, five times a second."""
    query = sa.select(thing_report_state.c.thing_name, thing_report_state.c.last_report_id,
                      thing_report_state.c.last_report_at)
    if things is None:
        return {t: (r, a) for t, r, a in conn.execute(query)}
    found: dict[str, tuple[int, float]] = {}
    for chunk in names_in_chunks(list(things)):
        found.update({t: (r, a) for t, r, a in
                      conn.execute(query.where(name_among(conn, thing_report_state.c.thing_name, chunk)))})
    return found


def reports_stored(conn: Connection, marks: Mapping[str, int]) -> bool:
    """Whether a transaction that stored these report ids (thing -> id) committed: report ids only
    increase, so it did if a thing's stored id has reached its mark."""
    stored = load_report_states(conn, marks)
    return any(stored[thing][0] >= mark for thing, mark in marks.items() if thing in stored)


def series_page(conn: Connection, thing: str, key: str, start: float, end: float,
                after: tuple[float, int] | None, limit: int) -> list[tuple[int, float, dict[str, Any]]]:
    """(id, ts, value) of one series in [start, end], oldest first, after the (ts, id) key."""
    return [(row_id, ts, values[key]) for row_id, ts, values in series_rows(conn, thing, (key,), start, end, after,
                                                                            limit)]


def series_rows(conn: Connection, thing: str, keys: Sequence[str], start: float, end: float,
                after: tuple[float, int] | None, limit: int, newest_first: bool = False
                ) -> list[tuple[int, float, dict[str, Any]]]:
    """(id, ts, {key: value}) of the rows holding any of ``keys`` in [start, end], oldest first
    after the (ts, id) key (or newest first before it)."""
    found: list[tuple[int, float, dict[str, Any]]] = []
    ts_column, id_column = metric_values.c.ts, metric_values.c.id
    while len(found) < limit:
        query = sa.select(metric_values.c.id, metric_values.c.ts, metric_values.c.datapoints).where(
            metric_values.c.thing_name == thing, ts_column >= start, ts_column <= end)
        if after is not None:
            ts, row_id = after
            query = query.where(sa.or_(ts_column < ts, sa.and_(ts_column == ts, id_column < row_id)) if newest_first
                                else sa.or_(ts_column > ts, sa.and_(ts_column == ts, id_column > row_id)))
        order = (ts_column.desc(), id_column.desc()) if newest_first else (ts_column, id_column)
        rows = conn.execute(query.order_by(*order).limit(500)).all()
        for row_id, ts, datapoints in rows:
            values = {key: datapoints[key] for key in keys if key in datapoints}
            if values:
                found.append((row_id, ts, values))
                if len(found) == limit:
                    break
        if len(rows) < 500:
            break
        after = (rows[-1].ts, rows[-1].id)
    return found


def newest_page(conn: Connection, thing: str, key: str, start: float, end: float,
                limit: int) -> list[tuple[int, float, Any]]:
    """(id, ts, value) of the newest ``limit`` datapoints of one series in [start, end], oldest
    first: a chart of a range holding more datapoints than it draws shows the range's end, where
    an operator looks first, rather than stopping partway."""
    return [(row_id, ts, values[key]) for row_id, ts, values in
            series_rows(conn, thing, (key,), start, end, None, limit, newest_first=True)][::-1]


def delete_older_than(conn: Connection, cutoff: float, batch: int = 5000) -> int:
    """Delete one batch of expired datapoints; returns how many went (0 when done). The history's
    compaction cursor comes back to the highest id left (``history._not_past``)."""
    ids = sa.select(metric_values.c.id).where(metric_values.c.ts < cutoff).limit(batch).scalar_subquery()
    deleted = conn.execute(metric_values.delete().where(metric_values.c.id.in_(ids))).rowcount
    compaction_cursor_not_past(conn)
    return deleted
