"""Detect mitigation in the console: the account's mitigation actions (create an "add to thing
groups" action, delete one), the tasks of the last 90 days with their statistics (cancel one in
progress), a task's executions, and a form to start a task on a profile's violations or on chosen
ones (the violations page links here with a violation filled in).

Every read and write goes through the AWS operations (ListMitigationActions,
StartDetectMitigationActionsTask, ...), so the console accepts and refuses exactly what the API
does; a refused form comes back as typed, with AWS's reason by it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from iotdefender.console.auth import Page, login_required
from iotdefender.console.context import ConsoleContext
from iotdefender.console.resources import every_page
from iotdefender.console.writes import Refused, lines, perform, refusal, run, text
from iotdefender.contract.errors import ApiError

TASKS_SHOWN_S = 90 * 86400.0  # AWS keeps Detect mitigation tasks 90 days


def routes(console: ConsoleContext) -> dict[str, Page]:
    api = console.api

    def listed(operation: str, key: str, params: dict[str, Any]) -> list[Any]:
        return every_page(api, operation, key, params)

    def read_page() -> dict[str, Any]:
        actions = [api.invoke("DescribeMitigationAction", {"actionName": a["actionName"]})
                   for a in listed("ListMitigationActions", "actionIdentifiers", {})]
        now = time.time()
        tasks = listed("ListDetectMitigationActionsTasks", "tasks", {"startTime": now - TASKS_SHOWN_S,
                                                                      "endTime": now + 60})
        profiles = [p["name"] for p in listed("ListSecurityProfiles", "securityProfileIdentifiers", {})]
        return {"actions": actions, "tasks": sorted(tasks, key=lambda t: t["taskStartTime"], reverse=True),
                "profiles": sorted(profiles)}

    async def mitigation_page(request: Request, refused: Refused | None = None) -> Response:
        read = await run(console, read_page)
        return console.render(request, "mitigation.html", status_code=refused.status if refused else 200,
                              refused=refused, request_token=str(uuid.uuid4()), task_id=f"task-{uuid.uuid4().hex[:12]}",
                              violation=request.query_params.get("violation", ""), **read)

    @login_required
    async def mitigation(request: Request) -> Response:
        """The page, and the creation of an ADD_THINGS_TO_THING_GROUP action (the type Detect applies)."""
        if request.method != "POST":
            return await mitigation_page(request)
        form = await request.form()
        params = {"actionName": text(form, "actionName"), "roleArn": text(form, "roleArn"),
                  "actionParams": {"addThingsToThingGroupParams": {
                      "thingGroupNames": lines(str(form.get("thingGroupNames", ""))),
                      "overrideDynamicGroups": form.get("overrideDynamicGroups") == "on"}}}
        return await perform(console, request, "create", [("CreateMitigationAction", params)], "/console/mitigation",
                             lambda refused: mitigation_page(request, refused))

    @login_required
    async def delete_action(request: Request) -> Response:
        name = request.path_params["name"]
        return await perform(console, request, f"delete:{name}", [("DeleteMitigationAction", {"actionName": name})],
                             "/console/mitigation", lambda refused: mitigation_page(request, refused))

    @login_required
    async def start_task(request: Request) -> Response:
        form = await request.form()
        target: dict[str, Any]
        if text(form, "target") == "violations":
            target = {"violationIds": lines(str(form.get("violationIds", "")))}
        else:
            target = {"securityProfileName": text(form, "securityProfileName")}
            if text(form, "behaviorName"):
                target["behaviorName"] = text(form, "behaviorName")
        params: dict[str, Any] = {
            "taskId": text(form, "taskId"), "target": target, "actions": [str(a) for a in form.getlist("actions")],
            "includeOnlyActiveViolations": form.get("includeOnlyActiveViolations") == "on",
            "includeSuppressedAlerts": form.get("includeSuppressedAlerts") == "on",
            "clientRequestToken": text(form, "clientRequestToken") or str(uuid.uuid4())}
        hours = text(form, "lastHours")
        if hours:
            try:
                span = float(hours) * 3600
            except ValueError:
                return await mitigation_page(request, Refused.of("start", form, reason="Last hours must be a number",
                                                                 field="lastHours"))
            now = time.time()
            params["violationEventOccurrenceRange"] = {"startTime": now - span, "endTime": now}
        return await perform(console, request, "start", [("StartDetectMitigationActionsTask", params)],
                             f"/console/mitigation/tasks/{params['taskId']}",
                             lambda refused: mitigation_page(request, refused))

    @login_required
    async def cancel_task(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        return await perform(console, request, f"cancel:{task_id}",
                             [("CancelDetectMitigationActionsTask", {"taskId": task_id})],
                             f"/console/mitigation/tasks/{task_id}", lambda refused: task_page(request, refused))

    async def task_page(request: Request, refused: Refused | None = None) -> Response:
        task_id = request.path_params["task_id"]

        def read() -> dict[str, Any]:
            summary = api.invoke("DescribeDetectMitigationActionsTask", {"taskId": task_id})["taskSummary"]
            executions = listed("ListDetectMitigationActionsExecutions", "actionsExecutions", {"taskId": task_id})
            return {"task": summary, "executions": executions}

        try:
            found = await run(console, read)
        except ApiError as error:  # an unknown task (or one retention deleted)
            return refusal(console, request, "Mitigation task", error)
        return console.render(request, "mitigation_task.html", status_code=refused.status if refused else 200,
                              refused=refused, **found)

    @login_required
    async def task(request: Request) -> Response:
        return await task_page(request)

    return {"mitigation": mitigation, "delete_action": delete_action, "start_task": start_task,
            "cancel_task": cancel_task, "task": task}
