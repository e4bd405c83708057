"""Runs Detect mitigation tasks in the background (``controlplane/detect_mitigation_tasks.py``).

Every node with the API runs a ``MitigationRunner``; a task is run by one node at a time, under a
lease kept in its row (``store/mitigation.claim_task``). A node that dies mid-task leaves it when
the lease runs out, and another carries on with the executions not done: each batch of
executions is written in the transaction that applies them, so none is applied twice and none is
lost. Batches are control-plane writes (``ServiceContext.writing``): the rules of thing groups (10
groups, one per hierarchy) hold against concurrent API calls, and a cancel is seen at the next batch.

An execution applies one ADD_THINGS_TO_THING_GROUP action to one violation's thing: into every
group of the action, or, refused (the thing or a group deleted since, the limits of groups), into
none: FAILED with the refusal's error code and message, and the violation's later actions SKIPPED
(AWS: "If you are applying multiple actions ... and one of those actions failed, the subsequent
actions are skipped"). ``overrideDynamicGroups`` changes nothing: there are no dynamic groups here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import groupby
from typing import Any

import anyio
import structlog

from iotdefender.contract.errors import ApiError
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.things import require_thing
from iotdefender.controlplane.thing_groups import join_all, require_group
from iotdefender.store import mitigation
from iotdefender.store.availability import is_unavailable, log_unless_outage

log = structlog.get_logger("iotdefender")

LEASE_S = 30.0
#: Violations applied in one transaction: short control-plane writes, a few ms each.
BATCH = 100
#: Failures in a row (not outages) after which a task ends FAILED (``MitigationRunner._failed``).
GIVE_UP_AFTER = 5


class MitigationRunner:
    """Claims tasks in progress and runs them, one batch of violations per transaction."""

    def __init__(self, ctx: ServiceContext, node: str, on_change: Callable[[], None], sole: bool = False,
                 poll_s: float = 1.0, lease_s: float = LEASE_S, batch: int = BATCH) -> None:
        """``on_change``: after a batch added things to groups (which profiles monitor them changed:
        the caches of the control plane are dropped, as after AddThingToThingGroup). ``sole``: no
        other process runs tasks on this database (one box): a task a killed process held is taken
        at once, not when its lease runs out."""
        self._ctx = ctx
        self._node = node
        self._sole = sole
        self._on_change = on_change
        self._poll_s, self._lease_s, self._batch = poll_s, lease_s, batch
        self._failures: dict[str, int] = {}  # task -> its failures in a row here
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self, operation_name: str = "", _params: Any = None) -> None:
        """A task may have started (an API write's listener, called from a worker thread)."""
        if operation_name and operation_name != "StartDetectMitigationActionsTask":
            return
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        while True:
            try:
                worked = await anyio.to_thread.run_sync(self.step)
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

    def step(self) -> bool:
        """Run one task this node may take, to its end or until it is no longer this node's;
        False when there was none."""
        with self._ctx.writing() as conn:
            task = mitigation.claim_task(conn, self._node, self._ctx.clock(), self._lease_s, self._sole)
        if task is None:
            return False
        task_id = task["task_id"]
        try:
            if not task["planned"] and not self._plan(task):
                return True
            while self._next_batch(task_id, [action["name"] for action in task["actions"]],
                                   {action["name"]: action for action in task["actions"]}):
                pass
        except Exception as error:
            self._failed(task_id, error)
            raise
        self._failures.pop(task_id, None)
        return True

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
            if mitigation.holds(conn, task_id, self._node):
                now = self._ctx.now()
                mitigation.skip_remaining(conn, task_id, now, f"The task could not run: {error}"[:2048])
                mitigation.finish_task(conn, task_id, "FAILED", now)
        log.error("mitigation_task_given_up", task=task_id, failures=failures, error=str(error))

    def _plan(self, task: dict[str, Any]) -> bool:
        """Choose the task's violations and write an execution of each action for each."""
        target = task["target"]
        occurrence = task["occurrence_range"] or {}
        with self._ctx.writing() as conn:
            if not mitigation.holds(conn, task["task_id"], self._node):
                return False
            targets = mitigation.violations_of(
                conn, target.get("violationIds"), target.get("securityProfileName"), target.get("behaviorName"),
                occurrence.get("startTime"), occurrence.get("endTime"), task["only_active"],
                task["include_suppressed"])
            mitigation.plan(conn, task["task_id"], task["start_time"], targets,
                            [action["name"] for action in task["actions"]])
            mitigation.set_planned(conn, task["task_id"])
        log.info("mitigation_task_planned", task=task["task_id"], violations=len(targets),
                 actions=len(task["actions"]))
        return True

    def _next_batch(self, task_id: str, names: list[str], actions: dict[str, dict[str, Any]]) -> bool:
        """Apply the next batch of the task's executions; False once the task is over (finished
        here, canceled, or taken over by another node)."""
        changed = False
        with self._ctx.writing() as conn:
            now = self._ctx.clock()
            if not mitigation.holds(conn, task_id, self._node):
                return False
            rows = mitigation.pending(conn, task_id, self._batch)
            if not rows:
                status = "FAILED" if mitigation.statistics(conn, [task_id])[task_id].get("FAILED") else "SUCCESSFUL"
                mitigation.finish_task(conn, task_id, status, self._ctx.now())
                log.info("mitigation_task_finished", task=task_id, status=status)
                return False
            for _, executions in groupby(rows, key=lambda row: row["violation_id"]):
                changed |= self._apply(conn, list(executions), actions)
            mitigation.renew(conn, task_id, now + self._lease_s)
        if changed:
            self._on_change()
        return True

    def _apply(self, conn: Any, executions: list[dict[str, Any]], actions: dict[str, dict[str, Any]]) -> bool:
        """One violation's executions in action order; whether a thing joined a group."""
        failed = False
        changed = False
        for row in executions:
            if row["status"] != mitigation.IN_PROGRESS:
                failed |= row["status"] == "FAILED"  # (an earlier batch's, on a restart)
                continue
            start = self._ctx.now()
            key = (row["task_id"], row["violation_id"], row["position"])
            if failed:
                mitigation.set_execution(conn, *key, "SKIPPED", start, start,
                                         message="An earlier action on this violation failed")
                continue
            groups = actions[row["action_name"]]["actionParams"]["addThingsToThingGroupParams"]["thingGroupNames"]
            try:
                require_thing(conn, row["thing_name"])
                for group in groups:
                    require_group(conn, group)
                changed |= join_all(conn, groups, row["thing_name"])
            except ApiError as error:
                failed = True
                mitigation.set_execution(conn, *key, "FAILED", start, self._ctx.now(), error.code, error.message)
                continue
            mitigation.set_execution(conn, *key, "SUCCESSFUL", start, self._ctx.now())
        return changed
