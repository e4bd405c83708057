"""Detect mitigation actions (controlplane/mitigation_actions.py, detect_mitigation_tasks.py,
mitigation_execution.py), driven as an operator does: boto3 for the API, real MQTT devices whose
reports raise the violations, and the task's effect seen through the API (the things in the
quarantine group, the executions listed)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.support.mqtt import Device, report
from tests.support.processes import wait_for

SERVICE_ARGS = ["--report-min-interval", "0"]
ROLE = "arn:aws:iam::123456789012:role/mitigation"
PORTS = {"name": "ports", "metric": "aws:num-listening-tcp-ports",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 3}}}
QUIET = {"name": "quiet", "metric": "aws:num-listening-udp-ports", "suppressAlerts": True,
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 1}}}


def fleet(service, iot, name: str, things: int) -> list[str]:  # type: ignore[no-untyped-def]
    """``things`` things in a group watched by a profile with two behaviors; each thing's device
    reports 5 TCP ports and 2 UDP ports once: a violation of each behavior (``quiet`` suppresses
    its alerts). Returns the things."""
    iot.create_thing_group(thingGroupName=f"{name}-fleet")
    iot.create_security_profile(securityProfileName=name, behaviors=[PORTS, QUIET])
    iot.attach_security_profile(securityProfileName=name,
                                securityProfileTargetArn=iot.describe_thing_group(
                                    thingGroupName=f"{name}-fleet")["thingGroupArn"])
    names = [f"{name}-{n}" for n in range(things)]
    for thing in names:
        iot.create_thing(thingName=thing)
        iot.add_thing_to_thing_group(thingGroupName=f"{name}-fleet", thingName=thing)
    for n, thing in enumerate(names):
        device = Device(service.mqtt_port, thing)
        try:
            assert device.report(report(n + 1, [1, 2, 3, 4, 5], listening_udp_ports={"ports": [{"port": 7}, {"port": 8}], "total": 2}))[0] == "json/accepted"
        finally:
            device.close()
    wait_for(lambda: len(active(iot, name)) == 2 * things, 20, "the violations")
    return names


def active(iot, profile: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [v for v in iot.get_paginator("list_active_violations").paginate(securityProfileName=profile)
            .build_full_result()["activeViolations"]]


def quarantine_action(iot, name: str, *groups: str) -> None:  # type: ignore[no-untyped-def]
    for group in groups:
        iot.create_thing_group(thingGroupName=group)
    iot.create_mitigation_action(actionName=name, roleArn=ROLE, actionParams={
        "addThingsToThingGroupParams": {"thingGroupNames": list(groups), "overrideDynamicGroups": False}})


def finished(iot, task_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    def done() -> bool:
        return iot.describe_detect_mitigation_actions_task(taskId=task_id)["taskSummary"]["taskStatus"] != "IN_PROGRESS"
    wait_for(done, 20, f"task {task_id} to end")
    return iot.describe_detect_mitigation_actions_task(taskId=task_id)["taskSummary"]


def members(iot, group: str) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(iot.list_things_in_thing_group(thingGroupName=group)["things"])


def executions(iot, **filters: Any) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return iot.get_paginator("list_detect_mitigation_actions_executions").paginate(
        **filters, PaginationConfig={"PageSize": 2}).build_full_result()["actionsExecutions"]


def test_mitigation_actions_are_created_described_updated_listed_tagged_and_deleted(service, iot):
    name = f"ma-{uuid.uuid4().hex[:8]}"
    quarantine_action(iot, name, f"{name}-q")
    described = iot.describe_mitigation_action(actionName=name)
    assert described["actionType"] == "ADD_THINGS_TO_THING_GROUP"
    assert described["actionArn"] == f"arn:aws:iot:us-east-1:123456789012:mitigationaction/{name}"
    assert described["roleArn"] == ROLE and uuid.UUID(described["actionId"])
    assert described["actionParams"] == {"addThingsToThingGroupParams": {"thingGroupNames": [f"{name}-q"],
                                                                         "overrideDynamicGroups": False}}
    # Every AWS type can be defined (Detect tasks apply one of them).
    iot.create_mitigation_action(actionName=f"{name}-sns", roleArn=ROLE, actionParams={
        "publishFindingToSnsParams": {"topicArn": "arn:aws:sns:us-east-1:123456789012:findings"}},
        tags=[{"Key": "team", "Value": "sec"}])
    sns_arn = iot.describe_mitigation_action(actionName=f"{name}-sns")["actionArn"]
    assert iot.list_tags_for_resource(resourceArn=sns_arn)["tags"] == [{"Key": "team", "Value": "sec"}]
    listed = iot.get_paginator("list_mitigation_actions").paginate(
        PaginationConfig={"PageSize": 1}).build_full_result()["actionIdentifiers"]
    assert {f"{name}", f"{name}-sns"} <= {a["actionName"] for a in listed}
    only = iot.list_mitigation_actions(actionType="PUBLISH_FINDING_TO_SNS")["actionIdentifiers"]
    assert f"{name}-sns" in {a["actionName"] for a in only} and name not in {a["actionName"] for a in only}

    time.sleep(0.01)
    iot.create_thing_group(thingGroupName=f"{name}-q2")
    iot.update_mitigation_action(actionName=name, actionParams={
        "addThingsToThingGroupParams": {"thingGroupNames": [f"{name}-q2"]}})
    updated = iot.describe_mitigation_action(actionName=name)
    assert updated["actionParams"]["addThingsToThingGroupParams"]["thingGroupNames"] == [f"{name}-q2"]
    assert updated["lastModifiedDate"] > updated["creationDate"]

    errors = iot.exceptions
    with pytest.raises(errors.ResourceAlreadyExistsException):
        iot.create_mitigation_action(actionName=name, roleArn=ROLE, actionParams={
            "addThingsToThingGroupParams": {"thingGroupNames": [f"{name}-q"]}})
    with pytest.raises(errors.InvalidRequestException, match="type"):  # the type of an action does not change
        iot.update_mitigation_action(actionName=name, actionParams={
            "updateDeviceCertificateParams": {"action": "DEACTIVATE"}})
    with pytest.raises(errors.InvalidRequestException, match="exactly one"):
        iot.create_mitigation_action(actionName=f"{name}-two", roleArn=ROLE, actionParams={
            "updateDeviceCertificateParams": {"action": "DEACTIVATE"},
            "publishFindingToSnsParams": {"topicArn": "arn:aws:sns:us-east-1:123456789012:t"}})
    with pytest.raises(errors.InvalidRequestException, match="do not exist"):
        iot.create_mitigation_action(actionName=f"{name}-nogroup", roleArn=ROLE, actionParams={
            "addThingsToThingGroupParams": {"thingGroupNames": [f"{name}-missing"]}})
    iot.create_thing_group(thingGroupName=f"{name}-child", parentGroupName=f"{name}-q")
    with pytest.raises(errors.InvalidRequestException, match="same hierarchy"):
        iot.create_mitigation_action(actionName=f"{name}-tree", roleArn=ROLE, actionParams={
            "addThingsToThingGroupParams": {"thingGroupNames": [f"{name}-q", f"{name}-child"]}})
    with pytest.raises(errors.InvalidRequestException, match="DISABLED"):
        iot.create_mitigation_action(actionName=f"{name}-log", roleArn=ROLE, actionParams={
            "enableIoTLoggingParams": {"roleArnForLogging": ROLE, "logLevel": "DISABLED"}})

    iot.delete_mitigation_action(actionName=f"{name}-sns")
    iot.delete_mitigation_action(actionName=f"{name}-sns")  # deleting nothing succeeds, as on AWS
    with pytest.raises(errors.ResourceNotFoundException):
        iot.describe_mitigation_action(actionName=f"{name}-sns")
    with pytest.raises(errors.ResourceNotFoundException):
        iot.list_tags_for_resource(resourceArn=sns_arn)


def test_a_task_on_named_violations_quarantines_their_things_and_lists_its_executions(service, iot):
    name = f"mt-{uuid.uuid4().hex[:8]}"
    things = fleet(service, iot, name, 3)
    quarantine_action(iot, f"{name}-act", f"{name}-quarantine")
    ports = sorted((v for v in active(iot, name) if v["behavior"]["name"] == "ports"), key=lambda v: v["thingName"])
    chosen = ports[:2]
    started = time.time()
    task_id = iot.start_detect_mitigation_actions_task(
        taskId=f"{name}-task", target={"violationIds": [v["violationId"] for v in chosen]},
        actions=[f"{name}-act"])["taskId"]
    assert task_id == f"{name}-task"
    summary = finished(iot, task_id)
    assert summary["taskStatus"] == "SUCCESSFUL"
    assert summary["taskStatistics"] == {"actionsExecuted": 2, "actionsSkipped": 0, "actionsFailed": 0}
    assert summary["actionsDefinition"][0]["name"] == f"{name}-act"
    assert summary["target"] == {"violationIds": [v["violationId"] for v in chosen]}
    assert summary["taskStartTime"].timestamp() >= started - 1 and summary["taskEndTime"] >= summary["taskStartTime"]
    assert members(iot, f"{name}-quarantine") == sorted(v["thingName"] for v in chosen)
    assert things[2] not in members(iot, f"{name}-quarantine")

    listed = executions(iot, taskId=task_id)
    assert sorted((e["thingName"], e["violationId"], e["actionName"], e["status"]) for e in listed) == sorted(
        (v["thingName"], v["violationId"], f"{name}-act", "SUCCESSFUL") for v in chosen)
    assert all(e["executionStartDate"] <= e["executionEndDate"] for e in listed)
    assert [e["thingName"] for e in executions(iot, taskId=task_id, thingName=chosen[0]["thingName"])] == [
        chosen[0]["thingName"]]
    assert [e["violationId"] for e in executions(iot, taskId=task_id, violationId=chosen[1]["violationId"])] == [
        chosen[1]["violationId"]]
    # AWS: "You must specify either the startTime and endTime or the taskId, but not both."
    assert task_id in {e["taskId"] for e in executions(iot, startTime=started - 60, endTime=time.time() + 60)}
    with pytest.raises(iot.exceptions.InvalidRequestException, match="not both"):
        iot.list_detect_mitigation_actions_executions(taskId=task_id, startTime=started - 60, endTime=time.time())
    with pytest.raises(iot.exceptions.InvalidRequestException, match="either"):
        iot.list_detect_mitigation_actions_executions(thingName=chosen[0]["thingName"])
    tasks = iot.get_paginator("list_detect_mitigation_actions_tasks").paginate(
        startTime=started - 60, endTime=time.time() + 60).build_full_result()["tasks"]
    assert task_id in {t["taskId"] for t in tasks}

    # The same request again (a retry: same token) answers the task; another token is refused.
    token = f"{name}-token"
    iot.start_detect_mitigation_actions_task(taskId=f"{name}-again", target={"violationIds": [chosen[0]["violationId"]]},
                                             actions=[f"{name}-act"], clientRequestToken=token)
    assert iot.start_detect_mitigation_actions_task(
        taskId=f"{name}-again", target={"violationIds": [chosen[0]["violationId"]]}, actions=[f"{name}-act"],
        clientRequestToken=token)["taskId"] == f"{name}-again"
    with pytest.raises(iot.exceptions.TaskAlreadyExistsException):
        iot.start_detect_mitigation_actions_task(
            taskId=f"{name}-again", target={"violationIds": [chosen[0]["violationId"]]}, actions=[f"{name}-act"])
    with pytest.raises(iot.exceptions.TaskAlreadyExistsException, match="other parameters"):  # same token, other ids
        iot.start_detect_mitigation_actions_task(
            taskId=f"{name}-again", target={"violationIds": [chosen[1]["violationId"]]}, actions=[f"{name}-act"],
            clientRequestToken=token)
    # A thing already in the group: the action succeeds and changes nothing.
    assert finished(iot, f"{name}-again")["taskStatistics"]["actionsExecuted"] == 1


def test_a_task_on_a_profiles_violations_follows_the_range_activity_and_suppression(service, iot):
    name = f"mp-{uuid.uuid4().hex[:8]}"
    things = fleet(service, iot, name, 2)
    quarantine_action(iot, f"{name}-act", f"{name}-q1")
    # A second action whose group the thing cannot join (a group of the same hierarchy as one it is in).
    iot.create_thing_group(thingGroupName=f"{name}-q1-child", parentGroupName=f"{name}-q1")
    iot.create_mitigation_action(actionName=f"{name}-child", roleArn=ROLE, actionParams={
        "addThingsToThingGroupParams": {"thingGroupNames": [f"{name}-q1-child"]}})
    quarantine_action(iot, f"{name}-after", f"{name}-q3")

    # Suppressed violations are left out unless asked for: the `ports` violations only.
    first = f"{name}-first"
    iot.start_detect_mitigation_actions_task(taskId=first, target={"securityProfileName": name},
                                             actions=[f"{name}-act", f"{name}-child", f"{name}-after"],
                                             violationEventOccurrenceRange={"startTime": time.time() - 600,
                                                                            "endTime": time.time() + 5})
    summary = finished(iot, first)
    # Each thing joined q1; its child group is refused (one group per hierarchy); the third action is skipped.
    assert summary["taskStatus"] == "FAILED"
    assert summary["taskStatistics"] == {"actionsExecuted": 2, "actionsSkipped": 2, "actionsFailed": 2}
    assert summary["suppressedAlertsIncluded"] is False
    listed = executions(iot, taskId=first)
    failed = [e for e in listed if e["status"] == "FAILED"]
    assert {e["actionName"] for e in failed} == {f"{name}-child"}
    assert all(e["errorCode"] == "InvalidRequestException" and "same hierarchy" in e["message"] for e in failed)
    assert members(iot, f"{name}-q1") == sorted(things) and members(iot, f"{name}-q3") == []

    # With suppressed alerts, only active violations, one behavior: the `quiet` violations.
    second = f"{name}-second"
    iot.start_detect_mitigation_actions_task(taskId=second, target={"securityProfileName": name,
                                                                     "behaviorName": "quiet"},
                                             actions=[f"{name}-after"], includeOnlyActiveViolations=True,
                                             includeSuppressedAlerts=True)
    summary = finished(iot, second)
    assert summary["taskStatus"] == "SUCCESSFUL" and summary["taskStatistics"]["actionsExecuted"] == 2
    assert {iot_violation["behavior"]["name"] for iot_violation in active(iot, name)
            if iot_violation["violationId"] in {e["violationId"] for e in executions(iot, taskId=second)}} == {"quiet"}
    assert members(iot, f"{name}-q3") == sorted(things)

    # A range with no event in it selects nothing: the task succeeds with no execution.
    empty = f"{name}-empty"
    iot.start_detect_mitigation_actions_task(taskId=empty, target={"securityProfileName": name},
                                             actions=[f"{name}-act"],
                                             violationEventOccurrenceRange={"startTime": 1000, "endTime": 2000})
    summary = finished(iot, empty)
    assert summary["taskStatus"] == "SUCCESSFUL" and executions(iot, taskId=empty) == []
    assert summary["violationEventOccurrenceRange"]["startTime"].timestamp() == 1000


def test_bad_tasks_get_aws_errors_and_a_finished_task_cannot_be_canceled(service, iot):
    name = f"mx-{uuid.uuid4().hex[:8]}"
    fleet(service, iot, name, 1)
    quarantine_action(iot, f"{name}-act", f"{name}-q")
    iot.create_mitigation_action(actionName=f"{name}-cert", roleArn=ROLE,
                                 actionParams={"updateDeviceCertificateParams": {"action": "DEACTIVATE"}})
    errors = iot.exceptions
    # (Its `quiet` violation suppresses alerts: left out of a task unless includeSuppressedAlerts.)
    (violation,) = [v["violationId"] for v in active(iot, name) if v["behavior"]["name"] == "ports"]

    def start(task: str, **request: Any) -> None:
        request.setdefault("target", {"violationIds": [violation]})
        request.setdefault("actions", [f"{name}-act"])
        iot.start_detect_mitigation_actions_task(taskId=task, **request)

    for request, match in [
        ({"actions": [f"{name}-cert"]}, "ADD_THINGS_TO_THING_GROUP"),
        ({"actions": [f"{name}-none"]}, "does not exist"),
        ({"actions": [f"{name}-act", f"{name}-act"]}, "more than once"),
        ({"target": {"violationIds": ["no-such-violation"]}}, "no-such-violation"),
        ({"target": {}}, "either"),
        ({"target": {"violationIds": [violation], "securityProfileName": name}}, "either"),
        ({"target": {"behaviorName": "ports"}}, "needs"),
        ({"target": {"securityProfileName": f"{name}-none"}}, "does not exist"),
        ({"target": {"securityProfileName": name, "behaviorName": "none"}}, "no behavior"),
        ({"violationEventOccurrenceRange": {"startTime": 2000, "endTime": 1000}}, "earlier"),
    ]:
        with pytest.raises(errors.InvalidRequestException, match=match):
            start(f"{name}-bad", **request)
    with pytest.raises(errors.ResourceNotFoundException):
        iot.describe_detect_mitigation_actions_task(taskId=f"{name}-bad")
    with pytest.raises(errors.ResourceNotFoundException):
        iot.cancel_detect_mitigation_actions_task(taskId=f"{name}-bad")
    with pytest.raises(errors.InvalidRequestException):  # over the model's 25
        start(f"{name}-many", target={"violationIds": [violation] * 26})

    start(f"{name}-done")
    assert finished(iot, f"{name}-done")["taskStatus"] == "SUCCESSFUL"
    assert [e["status"] for e in executions(iot, taskId=f"{name}-done")] == ["SUCCESSFUL"]
    # A violation named by id whose behavior suppresses alerts: acted on only with includeSuppressedAlerts.
    (quiet,) = [v["violationId"] for v in active(iot, name) if v["behavior"]["name"] == "quiet"]
    start(f"{name}-quiet", target={"violationIds": [quiet]})
    assert finished(iot, f"{name}-quiet")["taskStatus"] == "SUCCESSFUL" and executions(iot, taskId=f"{name}-quiet") == []
    start(f"{name}-quiet-too", target={"violationIds": [quiet]}, includeSuppressedAlerts=True)
    finished(iot, f"{name}-quiet-too")
    assert [e["violationId"] for e in executions(iot, taskId=f"{name}-quiet-too")] == [quiet]
    # A thing deleted since (or a device never registered): its execution fails, saying why.
    iot.remove_thing_from_thing_group(thingGroupName=f"{name}-q", thingName=f"{name}-0")
    iot.delete_thing(thingName=f"{name}-0")
    start(f"{name}-gone")
    assert finished(iot, f"{name}-gone")["taskStatus"] == "FAILED"
    (execution,) = executions(iot, taskId=f"{name}-gone")
    assert execution["status"] == "FAILED" and execution["errorCode"] == "ResourceNotFoundException"
    assert f"{name}-0" in execution["message"]
    with pytest.raises(errors.InvalidRequestException, match="in progress"):
        iot.cancel_detect_mitigation_actions_task(taskId=f"{name}-done")
    with pytest.raises(errors.InvalidRequestException):  # ListDetectMitigationActionsTasks: a range backwards
        iot.list_detect_mitigation_actions_tasks(startTime=2000, endTime=1000)
