"""Runs Detect mitigation tasks in the background (``controlplane/detect_mitigation_tasks.py``).

Every node with the API runs a ``MitigationRunner``; a task is run by one node at a time, under a
lease kept in its row (``store/mitigation.claim_task``). A node that dies mid-task leaves it when
the lease runs out, and another carries on with the executions not done: each step (choosing the
task's violations, or applying the next batch of them) claims the task and does its work in one
transaction, so none is applied twice and none is lost. The tasks a node runs take turns, one step
each. Steps are control-plane writes (``ServiceContext.writing``): the rules of thing groups (10
groups, one per hierarchy) hold against concurrent API calls, and a cancel is seen at the next step.

Between two steps the runner pauses as long as the step took (``MIN_PAUSE_S`` at least), so a task
takes at most half of the database's writing: on SQLite, whose writers take turns by polling, one
step right after another held the write lock for the whole task (an outside-in run: a task of 25,000
executions kept API writes and device reports waiting 21 s, then failed them with "database is
locked", and a cancel waited until the task was over). A step reads the registry once for its batch
(``registry.registry_facts``, the hierarchy) and writes the memberships and the executions' outcomes
in one statement each: per violation, five queries had made a batch of 100 take 0.58 s on PostgreSQL.

An execution applies one ADD_THINGS_TO_THING_GROUP action to one violation's thing: into every
group of the action, or, refused (the thing or a group deleted since, the limits of groups), into
none: FAILED with the refusal's error code and message, and the violation's later actions SKIPPED
(AWS: "If you are applying multiple actions ... and one of those actions failed, the subsequent
actions are skipped"). ``overrideDynamicGroups`` changes nothing: there are no dynamic groups here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from itertools import groupby
from typing import Any

import anyio
import structlog

from iotdefender.contract.errors import ApiError, not_found
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.thing_groups import groups_to_join
from iotdefender.store import mitigation, registry
from iotdefender.store.availability import is_unavailable, log_unless_outage
from iotdefender.store.mitigation import Outcome

log = structlog.get_logger("iotdefender")

LEASE_S = 30.0
#: Violations applied in one step: a few ms of one transaction.
BATCH = 100
#: Executions a planning step writes at most (tens of ms).
PLAN_ROWS = 2000
#: The shortest pause between two steps: longer than SQLite's busy handler sleeps between two tries
#: (up to 100 ms), so a writer waiting for the lock gets it.
MIN_PAUSE_S = 0.1
#: Failures in a row (not outages) after which a task ends FAILED (``MitigationRunner._failed``).
GIVE_UP_AFTER = 5


class MitigationRunner:
    """Claims tasks in progress and runs them, a step at a time."""

    def __init__(self, ctx: ServiceContext, node: str, on_change: Callable[[], None], sole: bool = False,
                 poll_s: float = 1.0, lease_s: float = LEASE_S, batch: int = BATCH,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """``on_change``: after a step added things to groups (which profiles monitor them changed:
        the caches of the control plane are dropped, as after AddThingToThingGroup). ``sole``: no
        other process runs tasks on this database (one box): a task a killed process held is taken
        at once, not when its lease runs out. ``sleep``: the pause between steps (tests: none)."""
        self._ctx = ctx
        self._node = node
        self._sole = sole
        self._on_change = on_change
        self._poll_s, self._lease_s, self._batch = poll_s, lease_s, batch
        self._sleep = sleep
        self._failures: dict[str, int] = {}  # task -> its failures in a row here
        self._targets: dict[str, list[tuple[str, str]]] = {}  # task being planned -> its (violation, thing)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self, operation_name: str = "", _params: Any = None, _output: Any = None) -> None:
        """A task may have started (an API write's listener, called from a worker thread)."""
        if operation_name and operation_name != "StartDetectMitigationActionsTask":
            return
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        while True:
            try:
                worked = await anyio.to_thread.run_sync(self.paced_step)
            except Exception as error:  # the next round retries; the loop must outlive a database outage
                log_unless_outage(log, "mitigation_task_failed", error)
                worked = False
            if worked:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            except asyncio.TimeoutError:
                pass

    def paced_step(self) -> bool:
        """``step``, then the pause that leaves the database to other writers."""
        began = time.monotonic()
        worked = self.step()
        if worked:
            self._sleep(max(MIN_PAUSE_S, time.monotonic() - began))
        return worked

    def step(self) -> bool:
        """One step of one task this node may run: choose its violations, apply its next batch,
        or end it; False when there was none."""
        task_id = None
        changed = False
        try:
            with self._ctx.writing() as conn:
                task = mitigation.claim_task(conn, self._node, self._ctx.clock(), self._lease_s, self._sole)
                if task is None:
                    self._targets.clear()  # a task this node was planning would be claimable: none is
                    return False
                task_id = task["task_id"]
                if task["previous_holder"] is not None:
                    log.warning("mitigation_task_taken_over", task=task_id, previous_node=task["previous_holder"])
                if not task["planned"]:
                    self._plan(conn, task)
                else:
                    changed = self._next_batch(conn, task)
        except Exception as error:
            if task_id is not None:
                self._failed(task_id, error)
            raise
        self._failures.pop(task_id, None)
        if changed:
            self._on_change()
        return True

    def _plan(self, conn: Any, task: dict[str, Any]) -> None:
        """Choose the task's violations (once per node: kept in memory until it is planned), and
        write an execution of each action for the next ``PLAN_ROWS`` of them (all of a violation's
        in one step): written in one transaction, a task of 75,000 executions held the database's
        writing for a second, and more would reach a writer's timeout. A node that takes a task over
        mid-plan chooses again and writes what is not written yet."""
        task_id, names = task["task_id"], [action["name"] for action in task["actions"]]
        targets = self._targets.get(task_id)
        if targets is None:
            target, occurrence = task["target"], task["occurrence_range"] or {}
            targets = self._targets[task_id] = mitigation.violations_of(
                conn, target.get("violationIds"), target.get("securityProfileName"), target.get("behaviorName"),
                occurrence.get("startTime"), occurrence.get("endTime"), task["only_active"],
                task["include_suppressed"])
        written = mitigation.planned_violations(conn, task_id)
        left = [(violation, thing) for violation, thing in targets if violation not in written]
        now = left[:max(1, PLAN_ROWS // len(names))]
        mitigation.plan(conn, task_id, task["start_time"], now, names)
        if len(now) == len(left):
            mitigation.set_planned(conn, task_id)
            del self._targets[task_id]
            log.info("mitigation_task_planned", task=task_id, violations=len(written) + len(left), actions=len(names))

    def _next_batch(self, conn: Any, task: dict[str, Any]) -> bool:
        """Apply the task's next batch of violations, or end it when none is left; whether a thing
        joined a group."""
        task_id = task["task_id"]
        rows = mitigation.pending(conn, task_id, self._batch)
        if not rows:
            status = "FAILED" if mitigation.statistics(conn, [task_id])[task_id].get("FAILED") else "SUCCESSFUL"
            mitigation.finish_task(conn, task_id, status, self._ctx.now())
            log.info("mitigation_task_finished", task=task_id, status=status)
            return False
        groups_of_action = {action["name"]: action["actionParams"]["addThingsToThingGroupParams"]["thingGroupNames"]
                            for action in task["actions"]}
        facts = registry.registry_facts(conn, sorted({row["thing_name"] for row in rows}))
        parents = registry.all_group_parents(conn)
        current = {thing: list(groups) for thing, (_, groups) in facts.items()}
        joins: list[tuple[str, str]] = []
        outcomes: list[Outcome] = []
        for violation_id, executions in groupby(rows, key=lambda row: row["violation_id"]):
            failed = False
            for row in executions:
                if row["status"] != mitigation.IN_PROGRESS:
                    failed |= row["status"] == "FAILED"
                    continue
                at = self._ctx.now()
                if failed:
                    outcomes.append(Outcome(violation_id, row["position"], "SKIPPED", at, at,
                                            message="An earlier action on this violation failed"))
                    continue
                thing = row["thing_name"]
                try:
                    joining = self._joining(thing, facts[thing][0], current[thing],
                                            groups_of_action[row["action_name"]], parents)
                except ApiError as error:
                    failed = True
                    outcomes.append(Outcome(violation_id, row["position"], "FAILED", at, at, error.code,
                                            error.message))
                    continue
                current[thing] += joining
                joins += [(group, thing) for group in joining]
                outcomes.append(Outcome(violation_id, row["position"], "SUCCESSFUL", at, at))
        registry.add_members(conn, joins)
        mitigation.set_executions(conn, task_id, outcomes)
        mitigation.renew(conn, task_id, self._ctx.clock() + self._lease_s)
        return bool(joins)

    @staticmethod
    def _joining(thing: str, registered: bool, current: list[str], groups: list[str],
                 parents: dict[str, str | None]) -> list[str]:
        """The groups ``thing`` joins, or the ApiError AddThingToThingGroup would answer."""
        if not registered:
            raise not_found(f"Thing {thing} cannot be found.")
        for group in groups:
            if group not in parents:
                raise not_found(f"Thing group {group} does not exist")
        return groups_to_join(thing, current, groups, parents)

    def _failed(self, task_id: str, error: BaseException) -> None:
        """A task that fails for a reason of its own (not a database outage) ``GIVE_UP_AFTER`` times
        in a row ends FAILED, what is left SKIPPED with the error: retried every second for ever,
        it stayed IN_PROGRESS, one of the five a user may run, with an error in the log each time."""
        if is_unavailable(error):
            return
        failures = self._failures[task_id] = self._failures.get(task_id, 0) + 1
        if failures < GIVE_UP_AFTER:
            return
        self._failures.pop(task_id, None)
        with self._ctx.writing() as conn:
            task = mitigation.get_task(conn, task_id)
            if task is not None and task["status"] == mitigation.IN_PROGRESS:
                now = self._ctx.now()
                mitigation.skip_remaining(conn, task_id, now, f"The task could not run: {error}"[:2048])
                mitigation.finish_task(conn, task_id, "FAILED", now)
        log.error("mitigation_task_given_up", task=task_id, failures=failures, error=str(error))
