"""The console's Detect mitigation pages over plain HTTP, on SQLite and PostgreSQL: an action
created, a task started from a violation's "mitigate" link and followed to its end, what each form
wrote checked through boto3, refusals shown by the form as typed (never a 500), and the pages
behind the session and the CSRF token."""

from __future__ import annotations

import html
import time
import uuid

import httpx

from tests.e2e.test_console_http import logged_in
from tests.support.mqtt import Device, report
from tests.support.processes import wait_for

SERVICE_ARGS = ["--report-min-interval", "0"]
PORTS = {"name": "ports", "metric": "aws:num-listening-tcp-ports",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 3}}}


def post(client: httpx.Client, token: str, path: str, **data) -> httpx.Response:  # type: ignore[no-untyped-def]
    return client.post(path, data={"csrf": token, **data})


def test_a_violation_is_mitigated_from_the_console(service):
    client, token = logged_in(service)
    iot = service.client()
    name = f"cm-{uuid.uuid4().hex[:8]}"
    thing = f"{name}-device"
    iot.create_thing(thingName=thing)
    iot.create_thing_group(thingGroupName=f"{name}-quarantine")
    iot.create_security_profile(securityProfileName=name, behaviors=[PORTS])
    iot.attach_security_profile(securityProfileName=name,
                                securityProfileTargetArn="arn:aws:iot:us-east-1:123456789012:all/things")
    device = Device(service.mqtt_port, thing)
    try:
        assert device.report(report(1, [1, 2, 3, 4]))[0] == "json/accepted"
    finally:
        device.close()
    wait_for(lambda: iot.list_active_violations(thingName=thing)["activeViolations"], 10, "the violation")
    (violation,) = [v["violationId"] for v in iot.list_active_violations(thingName=thing)["activeViolations"]]

    # A refused action comes back as typed, with AWS's reason; then one is created.
    refused = post(client, token, "/console/mitigation", actionName=f"{name}-act",
                   thingGroupNames=f"{name}-missing", roleArn="arn:aws:iam::123456789012:role/mitigation")
    assert refused.status_code == 400 and "do not exist" in refused.text
    assert f'value="{name}-act"' in refused.text and f"{name}-missing</textarea>" in refused.text
    created = post(client, token, "/console/mitigation", actionName=f"{name}-act",
                   thingGroupNames=f"{name}-quarantine", roleArn="arn:aws:iam::123456789012:role/mitigation")
    assert created.status_code == 303, created.text
    assert iot.describe_mitigation_action(actionName=f"{name}-act")["actionParams"] == {
        "addThingsToThingGroupParams": {"thingGroupNames": [f"{name}-quarantine"], "overrideDynamicGroups": False}}

    # The violations page links each violation to the start form, the violation filled in.
    violations = client.get("/console/violations")
    assert f"/console/mitigation?violation={violation}#task-form" in html.unescape(violations.text)
    form = client.get(f"/console/mitigation?violation={violation}")
    assert form.status_code == 200 and f"{violation}</textarea>" in form.text
    started = post(client, token, "/console/mitigation/tasks", taskId=f"{name}-task", target="violations",
                   violationIds=violation, actions=f"{name}-act")
    assert started.status_code == 303 and started.headers["location"] == f"/console/mitigation/tasks/{name}-task"
    wait_for(lambda: iot.describe_detect_mitigation_actions_task(taskId=f"{name}-task")["taskSummary"]["taskStatus"]
             == "SUCCESSFUL", 10, "the task")
    assert iot.list_things_in_thing_group(thingGroupName=f"{name}-quarantine")["things"] == [thing]
    page = client.get(f"/console/mitigation/tasks/{name}-task")
    assert page.status_code == 200 and "SUCCESSFUL: 1 succeeded, 0 failed, 0 skipped" in page.text
    assert f'data-thing="{thing}"' in page.text
    listing = client.get("/console/mitigation")
    assert f'data-task="{name}-task"' in listing.text and f'data-action="{name}-act"' in listing.text

    # A profile's violations in the last hour, through the other target of the form.
    by_profile = post(client, token, "/console/mitigation/tasks", taskId=f"{name}-profile", target="profile",
                      securityProfileName=name, lastHours="1", actions=f"{name}-act",
                      includeOnlyActiveViolations="on")
    assert by_profile.status_code == 303, by_profile.text
    summary = iot.describe_detect_mitigation_actions_task(taskId=f"{name}-profile")["taskSummary"]
    assert summary["target"] == {"securityProfileName": name} and summary["onlyActiveViolationsIncluded"] is True
    assert summary["violationEventOccurrenceRange"]["endTime"].timestamp() > time.time() - 60

    # Refusals: a finished task cannot be canceled, an unknown action, a bad number, an unknown task.
    wait_for(lambda: iot.describe_detect_mitigation_actions_task(taskId=f"{name}-profile")["taskSummary"][
        "taskStatus"] != "IN_PROGRESS", 10, "the second task")
    cancel = post(client, token, f"/console/mitigation/tasks/{name}-task/cancel")
    assert cancel.status_code == 400 and "in progress" in cancel.text
    unknown = post(client, token, "/console/mitigation/tasks", taskId=f"{name}-x", target="violations",
                   violationIds=violation, actions="no-such-action")
    assert unknown.status_code == 400 and "does not exist" in unknown.text and f'value="{name}-x"' in unknown.text
    hours = post(client, token, "/console/mitigation/tasks", taskId=f"{name}-y", target="profile",
                 securityProfileName=name, lastHours="soon", actions=f"{name}-act")
    assert hours.status_code == 400 and "must be a number" in hours.text
    assert client.get("/console/mitigation/tasks/no-such-task").status_code == 404
    deleted = post(client, token, f"/console/mitigation/actions/{name}-act/delete")
    assert deleted.status_code == 303
    assert f"{name}-act" not in {a["actionName"] for a in iot.list_mitigation_actions()["actionIdentifiers"]}


def test_the_mitigation_pages_need_a_session_and_their_forms_the_csrf_token(service):
    anonymous = httpx.Client(base_url=service.endpoint, follow_redirects=False)
    for path in ("/console/mitigation", "/console/mitigation/tasks/any"):
        answer = anonymous.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/console/login"), path
    client, _ = logged_in(service)
    for path in ("/console/mitigation", "/console/mitigation/tasks", "/console/mitigation/actions/any/delete",
                 "/console/mitigation/tasks/any/cancel"):
        answer = client.post(path, data={"csrf": "forged", "actionName": "csrf-x", "thingGroupNames": "g",
                                         "roleArn": "arn:aws:iam::123456789012:role/x"})
        assert answer.status_code == 403, path
    assert "csrf-x" not in {a["actionName"] for a in service.client().list_mitigation_actions()["actionIdentifiers"]}
