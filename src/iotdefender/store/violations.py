"""SQL for alarm states, active violations, the violation event history and verification states."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.engine.alarm import AlarmState, AlarmStatus, EventType
from iotdefender.engine.evaluator import StateKey, ViolationEvent
from iotdefender.store.database import long_statements
from iotdefender.store.pagination import keyset
from iotdefender.store.partition_selection import PartitionSelection, once_per_thing
from iotdefender.store.rows import insert_many, json_text, name_among, names_in_chunks
from iotdefender.store.schema import active_violations, alarm_states, violation_events, violation_verification


def _state_json(state: AlarmState) -> dict[str, Any]:
    # Field by field, not dataclasses.asdict: asdict deep-copies the metric values, and states are
    # immutable, so the copy only cost time on the ingest path.
    document = {f.name: getattr(state, f.name) for f in _STATE_FIELDS}
    document["status"] = state.status.value
    return document


_STATE_FIELDS = dataclasses.fields(AlarmState)


def _state_of(document: Mapping[str, Any]) -> AlarmState:
    # JSON gives the streak's (time, value) pairs back as lists; states saved before the streak
    # was kept have none.
    points = tuple((at, value) for at, value in document.get("streak_points") or ())
    return AlarmState(**{**document, "status": AlarmStatus(document["status"]), "streak_points": points})


def load_alarm_states(conn: Connection, selection: PartitionSelection | None = None) -> dict[StateKey, AlarmState]:
    """Every stored alarm state, or those of the things ``selection`` picks (a detect node taking
    partitions over: only their rows, and the rows of no recorded partition, picked by thing). One
    statement whose answer grows with the fleet, or its partitions' share, so not bounded by
    ``--database-timeout``."""
    return alarm_states_of(fetch_alarm_states(conn, selection), selection)


def fetch_alarm_states(conn: Connection, selection: PartitionSelection | None = None) -> list[Any]:
    """The statement of ``load_alarm_states``; ``alarm_states_of`` decodes its rows, after the
    caller's transaction if it likes (a transaction idle while a large read is decoded is ended by
    PostgreSQL after 30 s: store/history.py ``Fetched``)."""
    query = sa.select(alarm_states.c.thing_name, alarm_states.c.profile_name, alarm_states.c.behavior_name,
                      alarm_states.c.dimension, alarm_states.c.state, alarm_states.c.partition)
    if selection is not None:
        query = query.where(selection.where(alarm_states.c.partition))
    with long_statements():
        return list(conn.execute(query).all())


def alarm_states_of(rows: Iterable[Any], selection: PartitionSelection | None = None) -> dict[StateKey, AlarmState]:
    """The states of ``fetch_alarm_states``' rows (of the things ``selection`` picks)."""
    return {(r.thing_name, r.profile_name, r.behavior_name, r.dimension): _state_of(r.state) for r in rows
            if selection is None or r.partition is not None or selection(r.thing_name)}


_KEY = ("thing_name", "profile_name", "behavior_name", "dimension")
# Statements built once with bind parameters and run with executemany: constructing a statement
# per row cost SQLAlchemy ~100 µs each (cache-key generation, coercions), which made a burst of
# violations the slowest part of ingest (py-spy / cProfile on bench/pipeline.py).
_DELETE_STATE = alarm_states.delete().where(*(alarm_states.c[k] == sa.bindparam(f"k_{k}") for k in _KEY))
_TOUCH_ACTIVE = active_violations.update().where(
    active_violations.c.violation_id == sa.bindparam("k_violation_id")).values(
    last_violation_value=sa.bindparam("k_value"), last_violation_time=sa.bindparam("k_time"))
_EVENT_COLUMNS = ("violation_id", "event_type", "thing_name", "profile_name", "behavior", "criteria_type",
                  "suppressed", "metric_value", "event_time", "evidence", "behavior_name")
_ACTIVE_COLUMNS = ("violation_id", "thing_name", "profile_name", "behavior_name", "behavior", "criteria_type",
                   "suppressed", "last_violation_value", "last_violation_time", "violation_start_time")
_END_ACTIVE = active_violations.delete().where(active_violations.c.violation_id == sa.bindparam("k_violation_id"))


def save_alarm_states(conn: Connection, states: Mapping[StateKey, AlarmState],
                      partition_of: Callable[[str], int]) -> None:
    """Persist changed states: idle ones are deleted, others replaced, each with its thing's
    partition (``partition_of``; read by partition when a detect node takes partitions over); open
    violations follow."""
    if not states:
        return
    conn.execute(_DELETE_STATE, [{f"k_{k}": v for k, v in zip(_KEY, key)} for key in states])
    partition = once_per_thing(partition_of)  # a thing's states change together
    insert_many(conn, alarm_states, (*_KEY, "state", "partition"),
                [(*key, json_text(_state_json(state)), partition(key[0]))
                 for key, state in states.items() if not state.is_idle])
    touched = [{"k_violation_id": s.violation_id, "k_value": s.last_violation_value, "k_time": s.last_violation_time}
               for s in states.values() if s.status is AlarmStatus.IN_ALARM and s.violation_id is not None]
    if touched:
        conn.execute(_TOUCH_ACTIVE, touched)


def record_events(conn: Connection, events: Iterable[ViolationEvent]) -> None:
    """The events, and the active violations they open and end, in a few executemany statements."""
    events = list(events)
    if not events:
        return
    insert_many(conn, violation_events, _EVENT_COLUMNS, [
        (e.violation_id, e.event_type.value, e.thing_name, e.profile_name, json_text(e.behavior), e.criteria_type,
         e.suppressed, json_text(e.metric_value), e.at, json_text(e.evidence), e.behavior.get("name"))
        for e in events])
    opened = {e.violation_id: e for e in events if e.event_type is EventType.IN_ALARM}
    ended = [e.violation_id for e in events if e.event_type is not EventType.IN_ALARM]
    for violation_id in ended:  # opened and ended within this batch: never active
        opened.pop(violation_id, None)
    insert_many(conn, active_violations, _ACTIVE_COLUMNS, [
        (e.violation_id, e.thing_name, e.profile_name, e.behavior.get("name", ""), json_text(e.behavior),
         e.criteria_type, e.suppressed, json_text(e.metric_value), e.at, e.at) for e in opened.values()])
    if ended:
        conn.execute(_END_ACTIVE, [{"k_violation_id": v} for v in ended])


@dataclasses.dataclass(frozen=True)
class ViolationFilter:
    """What a list of violations is narrowed to, in storage's terms (None: no condition).

    ``suppressed`` True keeps only violations of behaviors with suppressAlerts, False only the
    others; ``verification_state`` "UNKNOWN" also matches violations never verified.
    """

    thing_name: str | None = None
    profile_name: str | None = None
    behavior_name: str | None = None
    criteria_type: str | None = None
    suppressed: bool | None = None
    verification_state: str | None = None


def _filters(table: sa.Table, filters: ViolationFilter) -> list[sa.ColumnElement[bool]]:
    clauses = []
    if filters.thing_name is not None:
        clauses.append(table.c.thing_name == filters.thing_name)
    if filters.profile_name is not None:
        clauses.append(table.c.profile_name == filters.profile_name)
    if filters.behavior_name is not None:
        clauses.append(table.c.behavior_name == filters.behavior_name)
    if filters.criteria_type is not None:
        clauses.append(table.c.criteria_type == filters.criteria_type)
    if filters.suppressed is not None:
        clauses.append(table.c.suppressed == filters.suppressed)
    state = filters.verification_state
    if state is not None:
        verified = sa.select(violation_verification.c.violation_id).where(violation_verification.c.state == state)
        if state == "UNKNOWN":  # never set means UNKNOWN, the documented default
            set_at_all = sa.select(violation_verification.c.violation_id)
            clauses.append(sa.or_(table.c.violation_id.in_(verified), table.c.violation_id.not_in(set_at_all)))
        else:
            clauses.append(table.c.violation_id.in_(verified))
    return clauses


def _with_verification(table: sa.Table) -> sa.Select:
    return sa.select(table, violation_verification.c.state.label("verification_state_value"),
                     violation_verification.c.description.label("verification_description_value")).select_from(
        table.outerjoin(violation_verification, violation_verification.c.violation_id == table.c.violation_id))


def active_page(conn: Connection, filters: ViolationFilter, after: tuple[float, str] | None, limit: int,
                descending: bool = False) -> Sequence[Any]:
    """Active violations by (start time, id), after the key ``after`` in that order (the most
    recent first if ``descending``): listed by id, they looked shuffled."""
    query = _with_verification(active_violations).where(*_filters(active_violations, filters))
    return conn.execute(keyset(query, active_violations.c.violation_start_time, active_violations.c.violation_id,
                                after, descending).limit(limit)).all()


def events_page(conn: Connection, filters: ViolationFilter, start: float, end: float,
                after: tuple[float, int] | None, limit: int, descending: bool = False) -> Sequence[Any]:
    """Events in [start, end] by (time, id), after the key ``after`` in that order (newest first if
    ``descending``)."""
    query = _with_verification(violation_events).where(
        violation_events.c.event_time >= start, violation_events.c.event_time <= end,
        *_filters(violation_events, filters))
    return conn.execute(keyset(query, violation_events.c.event_time, violation_events.c.id, after, descending)
                        .limit(limit)).all()


def events_of(conn: Connection, violation_id: str) -> Sequence[Any]:
    query = sa.select(violation_events).where(violation_events.c.violation_id == violation_id)
    return conn.execute(query.order_by(violation_events.c.event_time, violation_events.c.id)).all()


def first_events(conn: Connection, violation_ids: Iterable[str]) -> dict[str, Any]:
    """The first event of each of ``violation_ids`` that has one (the in-alarm event, which
    carries the behavior as it was), in a statement per ``names_in_chunks`` of ids."""
    first: dict[str, Any] = {}
    for chunk in names_in_chunks(list(dict.fromkeys(violation_ids))):
        query = (sa.select(violation_events).where(name_among(conn, violation_events.c.violation_id, chunk))
                 .order_by(violation_events.c.event_time, violation_events.c.id))
        for row in conn.execute(query):
            first.setdefault(row.violation_id, row)
    return first


def set_verification(conn: Connection, violation_id: str, state: str, description: str | None) -> None:
    conn.execute(violation_verification.delete().where(violation_verification.c.violation_id == violation_id))
    conn.execute(violation_verification.insert().values(violation_id=violation_id, state=state,
                                                        description=description))


def verification_of(conn: Connection, violation_id: str) -> tuple[str, str | None] | None:
    row = conn.execute(sa.select(violation_verification.c.state, violation_verification.c.description)
                       .where(violation_verification.c.violation_id == violation_id)).first()
    return (row[0], row[1]) if row else None


def violation_exists(conn: Connection, violation_id: str) -> bool:
    query = sa.select(sa.literal(1)).where(violation_events.c.violation_id == violation_id).limit(1)
    return conn.execute(query).first() is not None


def delete_orphan_verifications(conn: Connection, batch: int = 5000) -> int:
    """Delete one batch of verification states whose violation has no event left (retention
    deleted them) and is not active: nothing lists or sets them again (PutVerificationStateOnViolation
    refuses a violation without events), and they were kept forever."""
    table = violation_verification
    orphans = sa.select(table.c.violation_id).where(
        ~sa.exists().where(violation_events.c.violation_id == table.c.violation_id),
        ~sa.exists().where(active_violations.c.violation_id == table.c.violation_id)).limit(batch).scalar_subquery()
    return conn.execute(table.delete().where(table.c.violation_id.in_(orphans))).rowcount


def delete_events_older_than(conn: Connection, cutoff: float, batch: int = 5000) -> int:
    ids = sa.select(violation_events.c.id).where(violation_events.c.event_time < cutoff).limit(batch).scalar_subquery()
    return conn.execute(violation_events.delete().where(violation_events.c.id.in_(ids))).rowcount
