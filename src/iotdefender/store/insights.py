"""Aggregates for the console, computed by the database (GROUP BY, COUNT), never by loading rows.

Everything here is bounded by the number of profiles, behaviors or time buckets, not by the
number of devices, so the console's pages cost the same for 100 or 100,000 things.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.schema import (active_violations, security_profiles, thing_group_members, thing_groups,
                                      thing_report_state, things, violation_events)


def fleet_counts(conn: Connection, since: float) -> dict[str, int]:
    def count(query: Any) -> int:
        return int(conn.execute(query).scalar() or 0)

    return {
        "registeredThings": count(sa.select(sa.func.count()).select_from(things)),
        "reportingThings": count(sa.select(sa.func.count()).select_from(thing_report_state)),
        "recentlyReporting": count(sa.select(sa.func.count()).select_from(thing_report_state)
                                   .where(thing_report_state.c.last_report_at >= since)),
        "securityProfiles": count(sa.select(sa.func.count()).select_from(security_profiles)),
        "activeViolations": count(sa.select(sa.func.count()).select_from(active_violations)),
        "thingsInViolation": count(sa.select(sa.func.count(sa.distinct(active_violations.c.thing_name)))),
    }


def active_by_behavior(conn: Connection) -> list[dict[str, Any]]:
    query = (sa.select(active_violations.c.profile_name, active_violations.c.behavior_name,
                       sa.func.count().label("violations"),
                       sa.func.count(sa.distinct(active_violations.c.thing_name)).label("things"),
                       sa.func.min(active_violations.c.violation_start_time).label("oldest"))
             .group_by(active_violations.c.profile_name, active_violations.c.behavior_name)
             .order_by(sa.desc("violations"), active_violations.c.profile_name, active_violations.c.behavior_name))
    return [dict(row._mapping) for row in conn.execute(query)]


def active_by_profile(conn: Connection) -> dict[str, int]:
    query = sa.select(active_violations.c.profile_name, sa.func.count()).group_by(active_violations.c.profile_name)
    return {name: int(n) for name, n in conn.execute(query)}


def event_rate(conn: Connection, start: float, end: float, buckets: int) -> list[dict[str, Any]]:
    """Events per type in ``buckets`` equal slices of [start, end] (the violation-rate chart)."""
    width = (end - start) / buckets
    slot = sa.cast(sa.func.floor((violation_events.c.event_time - start) / width), sa.Integer).label("slot")
    query = (sa.select(slot, violation_events.c.event_type, sa.func.count())
             .where(violation_events.c.event_time >= start, violation_events.c.event_time < end)
             .group_by(slot, violation_events.c.event_type))
    counts: dict[tuple[int, str], int] = {(int(s), t): int(n) for s, t, n in conn.execute(query)}
    return [{"start": start + i * width,
             **{kind: counts.get((i, kind), 0) for kind in ("in-alarm", "alarm-cleared", "alarm-invalidated")}}
            for i in range(buckets)]


def recent_events(conn: Connection, after_id: int | None, limit: int) -> Sequence[Any]:
    """The newest events (or those after ``after_id``, oldest first, for the live stream)."""
    query = sa.select(violation_events.c.id, violation_events.c.violation_id, violation_events.c.event_type,
                      violation_events.c.thing_name, violation_events.c.profile_name, violation_events.c.behavior,
                      violation_events.c.metric_value, violation_events.c.event_time)
    if after_id is None:
        return list(reversed(conn.execute(query.order_by(violation_events.c.id.desc()).limit(limit)).all()))
    return conn.execute(query.where(violation_events.c.id > after_id).order_by(violation_events.c.id)
                        .limit(limit)).all()


def last_event_id(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.max(violation_events.c.id))).scalar() or 0)


def group_names(conn: Connection) -> list[str]:
    return [n for (n,) in conn.execute(sa.select(thing_groups.c.name).order_by(thing_groups.c.name))]


def members_of(conn: Connection, groups: list[str]) -> set[str]:
    query = sa.select(thing_group_members.c.thing_name).where(thing_group_members.c.group_name.in_(groups))
    return {n for (n,) in conn.execute(query)}


def last_report_at(conn: Connection, thing: str) -> float | None:
    """When the thing's last report was stored; None if it never reported."""
    return conn.execute(sa.select(thing_report_state.c.last_report_at)
                        .where(thing_report_state.c.thing_name == thing)).scalar()


DEVICE_SORTS = {"name": "thing_name", "last_report": "last_report_at", "alarms": "active"}


def devices_page(conn: Connection, search: str, sort: str, descending: bool, offset: int, limit: int
                 ) -> tuple[Sequence[Any], dict[str, int]]:
    """Reporting devices with their number of active violations, filtered by a name substring and
    sorted by name, last report or alarms; and the counts of the whole filtered list."""
    alarms = (sa.select(active_violations.c.thing_name, sa.func.count().label("active"))
              .group_by(active_violations.c.thing_name).subquery())
    active = sa.func.coalesce(alarms.c.active, 0).label("active")
    query = (sa.select(thing_report_state.c.thing_name, thing_report_state.c.last_report_at, active)
             .select_from(thing_report_state.outerjoin(alarms, alarms.c.thing_name == thing_report_state.c.thing_name)))
    if search:
        query = query.where(thing_report_state.c.thing_name.contains(search, autoescape=True))
    column = {"thing_name": thing_report_state.c.thing_name, "last_report_at": thing_report_state.c.last_report_at,
              "active": active}[DEVICE_SORTS[sort]]
    order = [column.desc() if descending else column.asc(), thing_report_state.c.thing_name]
    rows = conn.execute(query.order_by(*order).offset(offset).limit(limit)).all()
    counted = query.subquery()
    totals = conn.execute(sa.select(sa.func.count(), sa.func.count().filter(counted.c.active > 0))
                          .select_from(counted)).one()
    return rows, {"devices": int(totals[0]), "inAlarm": int(totals[1] or 0)}
