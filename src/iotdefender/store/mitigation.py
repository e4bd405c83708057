"""SQL for mitigation actions, Detect mitigation tasks and their executions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.pagination import keyset, scan_rows
from iotdefender.store.rows import insert_many
from iotdefender.store.schema import (
    active_violations,
    detect_mitigation_executions as executions,
    detect_mitigation_tasks as tasks,
    mitigation_actions as actions,
    violation_events,
)

IN_PROGRESS = "IN_PROGRESS"


# -- actions ------------------------------------------------------------------------------------------
def scan_actions(conn: Connection, action_type: str | None, after: str | None) -> Iterator[Any]:
    query = sa.select(actions.c.name, actions.c.arn, actions.c.creation_date)
    if action_type is not None:
        query = query.where(actions.c.action_type == action_type)
    return scan_rows(conn, query, actions.c.name, after)


# -- tasks --------------------------------------------------------------------------------------------
def get_task(conn: Connection, task_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).mappings().first()
    return dict(row) if row else None


def task_with_token(conn: Connection, token: str) -> str | None:
    return conn.execute(sa.select(tasks.c.task_id).where(tasks.c.client_request_token == token).limit(1)).scalar()


def insert_task(conn: Connection, **values: Any) -> None:
    conn.execute(tasks.insert().values(**values))


def count_running(conn: Connection) -> int:
    query = sa.select(sa.func.count()).select_from(tasks).where(tasks.c.status == IN_PROGRESS)
    return int(conn.execute(query).scalar_one())


def tasks_page(conn: Connection, start: float, end: float, after: tuple[float, str] | None, limit: int) -> list[Any]:
    """Tasks started in [start, end], oldest first, after the key ``after`` (start time, id)."""
    query = sa.select(tasks).where(tasks.c.start_time >= start, tasks.c.start_time <= end)
    return list(conn.execute(keyset(query, tasks.c.start_time, tasks.c.task_id, after).limit(limit)).mappings())


def claim_task(conn: Connection, node: str, now: float, lease_s: float, sole: bool = False) -> dict[str, Any] | None:
    """A task in progress that no live node runs (never claimed, or its lease ran out; ``sole``:
    any, no other node runs tasks) or that this node runs, now this node's until ``now + lease_s``,
    with ``previous_holder`` (the node that ran it, if another); None when there is none. The one
    least recently worked on first (``claimed_until``, renewed at each batch): a node's tasks take
    turns, as AWS runs up to five at once. ``FOR UPDATE SKIP LOCKED`` on PostgreSQL: two nodes
    looking at once take different tasks (SQLite has one writer)."""
    free = sa.or_(tasks.c.claimed_until.is_(None), tasks.c.claimed_until < now, tasks.c.claimed_by == node)
    query = (sa.select(tasks.c.task_id)
             .where(tasks.c.status == IN_PROGRESS, *(() if sole else (free,)))
             .order_by(tasks.c.claimed_until.asc().nulls_first(), tasks.c.start_time, tasks.c.task_id)
             .limit(1).with_for_update(skip_locked=True))
    task_id = conn.execute(query).scalar()
    if task_id is None:
        return None
    task = get_task(conn, task_id)
    assert task is not None
    conn.execute(tasks.update().where(tasks.c.task_id == task_id)
                 .values(claimed_by=node, claimed_until=now + lease_s))
    return {**task, "previous_holder": task["claimed_by"] if task["claimed_by"] != node else None}


def renew(conn: Connection, task_id: str, until: float) -> None:
    conn.execute(tasks.update().where(tasks.c.task_id == task_id).values(claimed_until=until))


def set_planned(conn: Connection, task_id: str) -> None:
    conn.execute(tasks.update().where(tasks.c.task_id == task_id).values(planned=True))


def finish_task(conn: Connection, task_id: str, status: str, at: float) -> None:
    conn.execute(tasks.update().where(tasks.c.task_id == task_id)
                 .values(status=status, end_time=at, claimed_by=None, claimed_until=None))


def delete_tasks_ended_before(conn: Connection, cutoff: float, batch: int = 500) -> int:
    """One batch of tasks that ended before ``cutoff``, their executions with them (ON DELETE
    CASCADE; AWS keeps Detect mitigation tasks 90 days)."""
    ids = sa.select(tasks.c.task_id).where(tasks.c.end_time < cutoff).limit(batch).scalar_subquery()
    return conn.execute(tasks.delete().where(tasks.c.task_id.in_(ids))).rowcount


# -- the violations a task acts on ----------------------------------------------------------------------
def violations_of(conn: Connection, violation_ids: Sequence[str] | None, profile: str | None,
                  behavior: str | None, since: float | None, until: float | None, only_active: bool,
                  include_suppressed: bool) -> list[tuple[str, str]]:
    """(violation id, thing) of the violations a task targets: those named, or those of a profile
    (and behavior); with an occurrence range, those with an event in it; only the active ones if
    asked; those of behaviors that suppress alerts only if asked. In the order they began."""
    # One row per violation whatever its events say: a behavior's suppressAlerts changed while it
    # was in alarm gives events of both values (suppressed if any is), and a violation listed twice
    # would be planned twice.
    suppressed = sa.func.max(sa.case((violation_events.c.suppressed, 1), else_=0))
    first = (sa.select(violation_events.c.violation_id, sa.func.min(violation_events.c.thing_name).label("thing"),
                       sa.func.min(violation_events.c.event_time).label("began"))
             .group_by(violation_events.c.violation_id))
    if violation_ids is not None:
        first = first.where(violation_events.c.violation_id.in_(list(violation_ids)))
    if profile is not None:
        first = first.where(violation_events.c.profile_name == profile)
    if behavior is not None:
        first = first.where(violation_events.c.behavior_name == behavior)
    if since is not None and until is not None:
        first = first.having(sa.func.max(sa.case((violation_events.c.event_time.between(since, until), 1),
                                                 else_=0)) == 1)
    if not include_suppressed:
        first = first.having(suppressed == 0)
    if only_active:
        first = first.where(violation_events.c.violation_id.in_(sa.select(active_violations.c.violation_id)))
    rows = conn.execute(first.order_by("began", violation_events.c.violation_id)).all()
    return [(row.violation_id, row.thing) for row in rows]


def known_violations(conn: Connection, violation_ids: Sequence[str]) -> set[str]:
    query = sa.select(violation_events.c.violation_id).where(
        violation_events.c.violation_id.in_(list(violation_ids))).distinct()
    return set(conn.execute(query).scalars())


# -- executions -----------------------------------------------------------------------------------------
_EXECUTION_COLUMNS = ("task_id", "violation_id", "position", "action_name", "thing_name", "status", "listed_at")


def plan(conn: Connection, task_id: str, listed_at: float, targets: Sequence[tuple[str, str]],
         action_names: Sequence[str]) -> None:
    """An execution IN_PROGRESS for each action on each targeted violation's thing."""
    insert_many(conn, executions, _EXECUTION_COLUMNS, [
        (task_id, violation_id, position, name, thing, IN_PROGRESS, listed_at)
        for violation_id, thing in targets for position, name in enumerate(action_names)])


def planned_violations(conn: Connection, task_id: str) -> set[str]:
    """The violations the task has executions of already (its plan is written a part at a time)."""
    query = sa.select(executions.c.violation_id).where(executions.c.task_id == task_id).distinct()
    return set(conn.execute(query).scalars())


def pending(conn: Connection, task_id: str, limit: int) -> list[Any]:
    """The next violations' executions not done yet (all of each violation's, in action order)."""
    violation_ids = (sa.select(executions.c.violation_id)
                     .where(executions.c.task_id == task_id, executions.c.status == IN_PROGRESS)
                     .group_by(executions.c.violation_id).order_by(executions.c.violation_id).limit(limit))
    query = (sa.select(executions)
             .where(executions.c.task_id == task_id, executions.c.violation_id.in_(violation_ids.scalar_subquery()))
             .order_by(executions.c.violation_id, executions.c.position))
    return list(conn.execute(query).mappings())


@dataclass(frozen=True)
class Outcome:
    """What became of one execution."""

    violation_id: str
    position: int
    status: str
    start: float
    end: float
    error_code: str | None = None
    message: str | None = None


_SET_EXECUTION = (executions.update()
                  .where(executions.c.task_id == sa.bindparam("k_task"),
                         executions.c.violation_id == sa.bindparam("k_violation"),
                         executions.c.position == sa.bindparam("k_position"))
                  .values(status=sa.bindparam("v_status"), start_date=sa.bindparam("v_start"),
                          end_date=sa.bindparam("v_end"), error_code=sa.bindparam("v_code"),
                          message=sa.bindparam("v_message")))


def set_executions(conn: Connection, task_id: str, outcomes: Sequence[Outcome]) -> None:
    """The executions' outcomes, in one executemany."""
    if outcomes:
        conn.execute(_SET_EXECUTION, [
            {"k_task": task_id, "k_violation": o.violation_id, "k_position": o.position, "v_status": o.status,
             "v_start": o.start, "v_end": o.end, "v_code": o.error_code, "v_message": o.message} for o in outcomes])


def skip_remaining(conn: Connection, task_id: str, at: float, message: str) -> None:
    conn.execute(executions.update().where(executions.c.task_id == task_id, executions.c.status == IN_PROGRESS)
                 .values(status="SKIPPED", end_date=at, message=message))


def statistics(conn: Connection, task_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Each task's executions by status."""
    counted: dict[str, dict[str, int]] = {task_id: {} for task_id in task_ids}
    if not task_ids:
        return counted
    query = (sa.select(executions.c.task_id, executions.c.status, sa.func.count())
             .where(executions.c.task_id.in_(list(task_ids)))
             .group_by(executions.c.task_id, executions.c.status))
    for task_id, status, count in conn.execute(query):
        counted[task_id][status] = int(count)
    return counted


def executions_page(conn: Connection, task_id: str | None, violation_id: str | None, thing_name: str | None,
                    start: float | None, end: float | None, after: tuple[float, str, str, int] | None,
                    limit: int) -> list[Any]:
    """Executions by (task start, task, violation, action position), filtered; after ``after``."""
    key = (executions.c.listed_at, executions.c.task_id, executions.c.violation_id, executions.c.position)
    query = sa.select(executions)
    for column, value in ((executions.c.task_id, task_id), (executions.c.violation_id, violation_id),
                          (executions.c.thing_name, thing_name)):
        if value is not None:
            query = query.where(column == value)
    if start is not None:
        query = query.where(executions.c.listed_at >= start)
    if end is not None:
        query = query.where(executions.c.listed_at <= end)
    if after is not None:
        query = query.where(sa.tuple_(*key) > sa.tuple_(*(sa.literal(value) for value in after)))
    return list(conn.execute(query.order_by(*key).limit(limit)).mappings())
