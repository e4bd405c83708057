"""SQL for retained datapoints (ListMetricValues) and the last accepted report of each thing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from iotdefender.store.schema import metric_values, thing_report_state


@dataclass(frozen=True)
class Datapoint:
    thing_name: str
    metric_name: str
    dimension: str
    ts: float
    value: dict[str, Any]


def dimension_key(name: str | None, operator: str | None) -> str:
    return "" if name is None else f"{name}|{operator or 'IN'}"


def insert_datapoints(conn: Connection, points: Sequence[Datapoint]) -> None:
    if points:
        conn.execute(metric_values.insert(), [
            {"thing_name": p.thing_name, "metric_name": p.metric_name, "dimension": p.dimension, "ts": p.ts,
             "value": p.value} for p in points])


def upsert_report_states(conn: Connection, states: Iterable[tuple[str, int, float]]) -> None:
    rows = [{"thing_name": t, "last_report_id": r, "last_report_at": a} for t, r, a in states]
    if not rows:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(thing_report_state).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=[thing_report_state.c.thing_name],
        set_={"last_report_id": stmt.excluded.last_report_id, "last_report_at": stmt.excluded.last_report_at},
    )
    conn.execute(stmt)


def load_report_states(conn: Connection) -> dict[str, tuple[int, float]]:
    rows = conn.execute(sa.select(thing_report_state.c.thing_name, thing_report_state.c.last_report_id,
                                  thing_report_state.c.last_report_at))
    return {t: (r, a) for t, r, a in rows}


def series_page(conn: Connection, thing: str, metric: str, dimension: str, start: float, end: float,
                after: tuple[float, int] | None, limit: int) -> list[Any]:
    """Datapoints of one series in [start, end], oldest first, after the (ts, id) key."""
    query = sa.select(metric_values.c.id, metric_values.c.ts, metric_values.c.value).where(
        metric_values.c.thing_name == thing,
        metric_values.c.metric_name == metric,
        metric_values.c.dimension == dimension,
        metric_values.c.ts >= start,
        metric_values.c.ts <= end,
    )
    if after is not None:
        ts, row_id = after
        query = query.where(sa.or_(metric_values.c.ts > ts, sa.and_(metric_values.c.ts == ts,
                                                                     metric_values.c.id > row_id)))
    return conn.execute(query.order_by(metric_values.c.ts, metric_values.c.id).limit(limit)).all()


def delete_older_than(conn: Connection, cutoff: float, batch: int = 5000) -> int:
    """Delete one batch of expired datapoints; returns how many went (0 when done)."""
    ids = sa.select(metric_values.c.id).where(metric_values.c.ts < cutoff).limit(batch).scalar_subquery()
    return conn.execute(metric_values.delete().where(metric_values.c.id.in_(ids))).rowcount
