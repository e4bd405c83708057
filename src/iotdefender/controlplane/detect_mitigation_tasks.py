"""Detect mitigation tasks: StartDetectMitigationActionsTask, DescribeDetectMitigationActionsTask,
ListDetectMitigationActionsTasks, ListDetectMitigationActionsExecutions, CancelDetectMitigationActionsTask.

A task applies up to five mitigation actions, in the order given, to the thing of each violation it
targets; ``controlplane/mitigation_execution.py`` runs it in the background, as AWS does (the task is
IN_PROGRESS, then SUCCESSFUL, FAILED when an execution failed, or CANCELED).

Where AWS is silent (docs/api-behaviour.md, "Detect mitigation"):

- The target is either ``violationIds`` (each must be a violation with events still retained) or
  ``securityProfileName`` with an optional ``behaviorName`` (the profile must exist, and the behavior
  be one of it): its violations, those with an event in ``violationEventOccurrenceRange`` when given.
  ``includeOnlyActiveViolations`` keeps those active when the task begins; ``includeSuppressedAlerts``
  (default false) adds those of behaviors that suppress alerts. The violations are chosen when a node
  begins running the task (within a second of its start; their executions are written a part at a time).
- An action whose type Detect does not apply (all but ADD_THINGS_TO_THING_GROUP) is refused.
- ``taskStatistics`` partitions the executions: ``actionsExecuted`` (succeeded), ``actionsFailed``,
  ``actionsSkipped`` (not run: an earlier action on the same violation failed, or the task was
  canceled). An execution still to run is in none.
- ``clientRequestToken``: the same task id and token again returns the task (a retry); another token
  for an existing task id, or a token another task was started with, is TaskAlreadyExistsException.
- ListDetectMitigationActionsExecutions's ``startTime``/``endTime`` select by the start of the
  executions' task (AWS: either they or ``taskId``, not both).
- The same task id and token with other parameters is TaskAlreadyExistsException, not the old task.
- An action named twice in ``actions`` is InvalidRequestException.
"""

from __future__ import annotations

from typing import Any

from iotdefender.contract.errors import ApiError, invalid_request, limit_exceeded, not_found
from iotdefender.contract.timestamps import stored_range
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.mitigation_actions import ADD_THINGS_TO_THING_GROUP, definition
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.controlplane.pagination import decode_token, encode_token, page_size, scope_of
from iotdefender.store import catalog, mitigation, profiles

operation = OperationTable()

MAX_RUNNING = 5  # AWS quota "Detect mitigation action tasks running at the same time: 5"


def task_already_exists(message: str) -> ApiError:
    return ApiError("TaskAlreadyExistsException", message)


def _check_target(conn: Any, target: Params) -> None:
    ids: list[str] | None = target.get("violationIds")
    profile: str | None = target.get("securityProfileName")
    behavior: str | None = target.get("behaviorName")
    if behavior is not None and profile is None:
        raise invalid_request("target.behaviorName needs target.securityProfileName")
    if (ids is None) == (profile is None):
        raise invalid_request("target must name either violationIds or a securityProfileName (with an optional "
                              "behaviorName)")
    if ids is not None:
        unknown = sorted(set(ids) - mitigation.known_violations(conn, ids))
        if unknown:
            raise invalid_request(f"Violation(s) {', '.join(unknown)} do not exist")
        return
    assert profile is not None
    row = profiles.get(conn, profile)
    if row is None:
        raise invalid_request(f"Security profile {profile} does not exist")
    if behavior is not None and behavior not in {b.get("name") for b in row["behaviors"]}:
        raise invalid_request(f"Security profile {profile} has no behavior {behavior}")


def _definitions(conn: Any, names: list[str]) -> list[Params]:
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # it would be applied twice to each violation's thing, the second time for nothing
        raise invalid_request(f"actions lists {', '.join(twice)} more than once")
    found = []
    for name in names:
        row = catalog.get(conn, "mitigation_action", name)
        if row is None:
            raise invalid_request(f"Mitigation action {name} does not exist")
        if row["action_type"] != ADD_THINGS_TO_THING_GROUP:
            raise invalid_request(f"Mitigation action {name} is of type {row['action_type']}: Detect mitigation "
                                  f"tasks apply {ADD_THINGS_TO_THING_GROUP} actions only")
        found.append(definition(row))
    return found


@operation("StartDetectMitigationActionsTask", changes_monitoring=False)
def start_detect_mitigation_actions_task(ctx: ServiceContext, params: Params) -> Params:
    task_id, token = params["taskId"], params["clientRequestToken"]
    occurrence = params.get("violationEventOccurrenceRange")
    if occurrence is not None and occurrence["endTime"] < occurrence["startTime"]:
        raise invalid_request("violationEventOccurrenceRange.endTime must not be earlier than its startTime")
    with ctx.writing() as conn:
        existing = mitigation.get_task(conn, task_id)
        if existing is not None:
            if existing["client_request_token"] != token:
                raise task_already_exists(f"Task {task_id} already exists")
            if _asked(existing) != _asked_now(params):
                raise task_already_exists(f"Task {task_id} was started with this clientRequestToken and other "
                                          "parameters")
            return {"taskId": task_id}  # a retry of the same request
        other = mitigation.task_with_token(conn, token)
        if other is not None:
            raise task_already_exists(f"clientRequestToken {token} was given to task {other}")
        _check_target(conn, params["target"])
        actions = _definitions(conn, params["actions"])
        if mitigation.count_running(conn) >= MAX_RUNNING:
            raise limit_exceeded(f"{MAX_RUNNING} Detect mitigation actions tasks are in progress, the maximum")
        mitigation.insert_task(
            conn, task_id=task_id, client_request_token=token, status=mitigation.IN_PROGRESS, start_time=ctx.now(),
            target=params["target"], occurrence_range=occurrence,
            only_active=bool(params.get("includeOnlyActiveViolations")),
            include_suppressed=bool(params.get("includeSuppressedAlerts")), actions=actions, planned=False)
    return {"taskId": task_id}


def _asked(row: dict[str, Any]) -> tuple[Any, ...]:
    """What a stored task was asked to do, as ``_asked_now`` reads a request."""
    return (row["target"], [action["name"] for action in row["actions"]], row["occurrence_range"],
            row["only_active"], row["include_suppressed"])


def _asked_now(params: Params) -> tuple[Any, ...]:
    return (params["target"], params["actions"], params.get("violationEventOccurrenceRange"),
            bool(params.get("includeOnlyActiveViolations")), bool(params.get("includeSuppressedAlerts")))


def _summary(row: dict[str, Any], counted: dict[str, int]) -> Params:
    summary: Params = {
        "taskId": row["task_id"], "taskStatus": row["status"], "taskStartTime": row["start_time"],
        "taskEndTime": row["end_time"], "target": row["target"],
        "onlyActiveViolationsIncluded": row["only_active"], "suppressedAlertsIncluded": row["include_suppressed"],
        "actionsDefinition": row["actions"],
        "taskStatistics": {"actionsExecuted": counted.get("SUCCESSFUL", 0),
                           "actionsSkipped": counted.get("SKIPPED", 0),
                           "actionsFailed": counted.get("FAILED", 0)},
    }
    if row["occurrence_range"] is not None:
        summary["violationEventOccurrenceRange"] = row["occurrence_range"]
    return summary


@operation("DescribeDetectMitigationActionsTask")
def describe_detect_mitigation_actions_task(ctx: ServiceContext, params: Params) -> Params:
    with ctx.engine.connect() as conn:
        row = mitigation.get_task(conn, params["taskId"])
        if row is None:
            raise not_found(f"Detect mitigation actions task {params['taskId']} does not exist")
        counted = mitigation.statistics(conn, [row["task_id"]])[row["task_id"]]
    return {"taskSummary": _summary(row, counted)}


@operation("ListDetectMitigationActionsTasks")
def list_detect_mitigation_actions_tasks(ctx: ServiceContext, params: Params) -> Params:
    """Tasks started in [startTime, endTime], oldest first."""
    if params["endTime"] < params["startTime"]:
        raise invalid_request("endTime must not be earlier than startTime")
    start, end = stored_range(params["startTime"], params["endTime"])
    scope = scope_of(params)
    after = decode_token(params.get("nextToken"), scope, (float, str))
    limit = page_size(params.get("maxResults"))
    with ctx.engine.connect() as conn:
        rows = mitigation.tasks_page(conn, start, end, tuple(after) if after else None, limit + 1)
        counted = mitigation.statistics(conn, [row["task_id"] for row in rows[:limit]])
    token = encode_token([rows[limit - 1]["start_time"], rows[limit - 1]["task_id"]], scope) if len(rows) > limit else None
    return {"tasks": [_summary(row, counted[row["task_id"]]) for row in rows[:limit]], "nextToken": token}


@operation("ListDetectMitigationActionsExecutions")
def list_detect_mitigation_actions_executions(ctx: ServiceContext, params: Params) -> Params:
    """AWS: "You must specify either the startTime and endTime or the taskId, but not both"."""
    ranged = params.get("startTime") is not None or params.get("endTime") is not None
    if params.get("taskId") is not None and ranged:
        raise invalid_request("Specify either taskId or startTime and endTime, not both")
    if params.get("taskId") is None and (params.get("startTime") is None or params.get("endTime") is None):
        raise invalid_request("Specify either taskId or both startTime and endTime")
    start = end = None
    if ranged:
        if params["endTime"] < params["startTime"]:
            raise invalid_request("endTime must not be earlier than startTime")
        start, end = stored_range(params["startTime"], params["endTime"])
    scope = scope_of(params)
    after = decode_token(params.get("nextToken"), scope, (float, str, str, int))
    limit = page_size(params.get("maxResults"))
    with ctx.engine.connect() as conn:
        rows = mitigation.executions_page(conn, params.get("taskId"), params.get("violationId"),
                                          params.get("thingName"), start, end, tuple(after) if after else None,
                                          limit + 1)
    last = rows[limit - 1] if len(rows) > limit else None
    token = (encode_token([last["listed_at"], last["task_id"], last["violation_id"], last["position"]], scope)
             if last is not None else None)
    return {"actionsExecutions": [_execution(row) for row in rows[:limit]], "nextToken": token}


def _execution(row: dict[str, Any]) -> Params:
    return {"taskId": row["task_id"], "violationId": row["violation_id"], "actionName": row["action_name"],
            "thingName": row["thing_name"], "executionStartDate": row["start_date"],
            "executionEndDate": row["end_date"], "status": row["status"], "errorCode": row["error_code"],
            "message": row["message"]}


@operation("CancelDetectMitigationActionsTask", changes_monitoring=False)
def cancel_detect_mitigation_actions_task(ctx: ServiceContext, params: Params) -> Params:
    """The executions not run yet are SKIPPED; those done are not undone (AWS rolls nothing back)."""
    task_id = params["taskId"]
    with ctx.writing() as conn:
        row = mitigation.get_task(conn, task_id)
        if row is None:
            raise not_found(f"Detect mitigation actions task {task_id} does not exist")
        if row["status"] != mitigation.IN_PROGRESS:
            raise invalid_request(f"Task {task_id} is {row['status']}: only a task in progress can be canceled")
        now = ctx.now()
        mitigation.skip_remaining(conn, task_id, now, "The task was canceled")
        mitigation.finish_task(conn, task_id, "CANCELED", now)
    return {}
