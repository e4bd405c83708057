"""Security profiles end to end, through boto3 only, on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

ACCOUNT = "123456789012"
REGION = "us-east-1"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def arn(resource: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:{resource}"


def error_of(excinfo) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


PORTS_BEHAVIOR = {
    "name": "ListeningPorts",
    "metric": "aws:listening-tcp-ports",
    "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443, 8883]}},
}
MESSAGES_BEHAVIOR = {
    "name": "MessagesSent",
    "metric": "aws:num-messages-sent",
    "criteria": {
        "comparisonOperator": "less-than-equals",
        "value": {"count": 50},
        "durationSeconds": 300,
        "consecutiveDatapointsToAlarm": 2,
        "consecutiveDatapointsToClear": 1,
    },
    "suppressAlerts": True,
}
STATISTICAL_BEHAVIOR = {
    "name": "LargeMessages",
    "metric": "aws:message-byte-size",
    "criteria": {"comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p90"},
                 "durationSeconds": 300},
}


def test_create_describe_roundtrip(iot):
    name = unique("sp")
    alert = {"SNS": {"alertTargetArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts",
                     "roleArn": f"arn:aws:iam::{ACCOUNT}:role/DefenderAlerts"}}
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=2)
    created = iot.create_security_profile(
        securityProfileName=name,
        securityProfileDescription="ports and traffic",
        behaviors=[PORTS_BEHAVIOR, MESSAGES_BEHAVIOR, STATISTICAL_BEHAVIOR],
        alertTargets=alert,
        additionalMetricsToRetainV2=[{"metric": "aws:num-authorization-failures"}],
        tags=[{"Key": "team", "Value": "ops"}],
    )
    assert created["securityProfileName"] == name
    assert created["securityProfileArn"] == arn(f"securityprofile/{name}")

    described = iot.describe_security_profile(securityProfileName=name)
    assert described["version"] == 1
    assert described["securityProfileDescription"] == "ports and traffic"
    assert described["behaviors"] == [PORTS_BEHAVIOR, MESSAGES_BEHAVIOR, STATISTICAL_BEHAVIOR]
    assert described["alertTargets"] == alert
    assert described["additionalMetricsToRetainV2"] == [{"metric": "aws:num-authorization-failures"}]
    assert before <= described["creationDate"] <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)
    assert described["creationDate"] == described["lastModifiedDate"]
    assert iot.list_tags_for_resource(resourceArn=created["securityProfileArn"])["tags"] == [
        {"Key": "team", "Value": "ops"}]


def test_create_twice_is_resource_already_exists(iot):
    name = unique("sp")
    iot.create_security_profile(securityProfileName=name)
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as exc:
        iot.create_security_profile(securityProfileName=name)
    assert error_of(exc) == ("ResourceAlreadyExistsException", 409)
    assert exc.value.response["resourceArn"] == arn(f"securityprofile/{name}")


def test_describe_missing_is_not_found(iot):
    with pytest.raises(iot.exceptions.ResourceNotFoundException) as exc:
        iot.describe_security_profile(securityProfileName=unique("missing"))
    assert error_of(exc) == ("ResourceNotFoundException", 404)
    assert exc.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == "ResourceNotFoundException"


@pytest.mark.parametrize(
    "behavior, fragment",
    [
        ({**MESSAGES_BEHAVIOR, "criteria": {**MESSAGES_BEHAVIOR["criteria"], "consecutiveDatapointsToAlarm": 100000}},
         "consecutiveDatapointsToAlarm 100000 should be in range[1,10]"),
        ({**MESSAGES_BEHAVIOR, "criteria": {**MESSAGES_BEHAVIOR["criteria"], "durationSeconds": 301}}, "301"),
        ({**PORTS_BEHAVIOR, "criteria": {"comparisonOperator": "less-than", "value": {"ports": [1]}}}, "less-than"),
        ({**PORTS_BEHAVIOR, "criteria": {"comparisonOperator": "in-port-set", "value": {"count": 3}}}, "ports"),
        ({**PORTS_BEHAVIOR, "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [1]},
                                          "durationSeconds": 300}}, "durationSeconds"),
        ({"name": "ml", "metric": "aws:source-ip-address",
          "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}}}, "ml"),
        ({"name": "stat", "metric": "aws:listening-tcp-ports",
          "criteria": {"comparisonOperator": "in-port-set", "statisticalThreshold": {"statistic": "p90"}}}, "stat"),
        ({"name": "unknown", "metric": "notACustomMetric",
          "criteria": {"comparisonOperator": "less-than", "value": {"number": 1}}}, "notACustomMetric"),
        ({"name": "dim", "metric": "aws:num-messages-sent", "metricDimension": {"dimensionName": "noSuchDimension"},
          "criteria": {"comparisonOperator": "less-than", "value": {"count": 1}}}, "noSuchDimension"),
        ({"name": "bad name!", "metric": "aws:num-messages-sent",
          "criteria": {"comparisonOperator": "less-than", "value": {"count": 1}}}, "bad name!"),
    ],
)
def test_invalid_behaviors_are_rejected_with_named_rule(iot, behavior, fragment):
    name = unique("sp")
    with pytest.raises(iot.exceptions.InvalidRequestException) as exc:
        iot.create_security_profile(securityProfileName=name, behaviors=[behavior])
    assert error_of(exc) == ("InvalidRequestException", 400)
    assert fragment in exc.value.response["Error"]["Message"]
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_security_profile(securityProfileName=name)

    result = iot.validate_security_profile_behaviors(behaviors=[behavior])
    assert result["valid"] is False
    assert any(fragment in e["errorMessage"] for e in result["validationErrors"])


def test_validate_reports_one_error_per_problem(iot):
    bad1 = {**MESSAGES_BEHAVIOR, "criteria": {**MESSAGES_BEHAVIOR["criteria"], "consecutiveDatapointsToAlarm": 100000}}
    bad2 = {**PORTS_BEHAVIOR, "name": "Ports2", "criteria": {"comparisonOperator": "greater-than",
                                                              "value": {"ports": [1]}}}
    result = iot.validate_security_profile_behaviors(behaviors=[bad1, bad2, STATISTICAL_BEHAVIOR])
    assert result["valid"] is False
    messages = [e["errorMessage"] for e in result["validationErrors"]]
    assert messages[0] == "Behavior MessagesSent is malformed. consecutiveDatapointsToAlarm 100000 should be in range[1,10]"
    assert len(messages) == 1  # model-level problems are reported first, as AWS's example shows
    assert iot.validate_security_profile_behaviors(behaviors=[bad2])["valid"] is False
    bad3 = {**bad2, "name": "Ports3"}
    with pytest.raises(iot.exceptions.InvalidRequestException) as refused:  # several problems, told apart
        iot.create_security_profile(securityProfileName=unique("sp"), behaviors=[bad2, bad3])
    assert "; Behavior Ports3 is malformed. " in refused.value.response["Error"]["Message"]
    ok = iot.validate_security_profile_behaviors(behaviors=[PORTS_BEHAVIOR, MESSAGES_BEHAVIOR, STATISTICAL_BEHAVIOR])
    assert ok == {"valid": True, "validationErrors": [], "ResponseMetadata": ok["ResponseMetadata"]}


def test_duplicate_behavior_names_and_limits(iot):
    with pytest.raises(iot.exceptions.InvalidRequestException) as exc:
        iot.create_security_profile(securityProfileName=unique("sp"), behaviors=[PORTS_BEHAVIOR, PORTS_BEHAVIOR])
    assert "ListeningPorts" in exc.value.response["Error"]["Message"]
    many = [{**MESSAGES_BEHAVIOR, "name": f"b{i}"} for i in range(101)]
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_security_profile(securityProfileName=unique("sp"), behaviors=many)
    ports = {**PORTS_BEHAVIOR, "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": list(range(1001))}}}
    with pytest.raises(iot.exceptions.InvalidRequestException) as exc:
        iot.create_security_profile(securityProfileName=unique("sp"), behaviors=[ports])
    assert "1000" in exc.value.response["Error"]["Message"]


def test_update_versions_replaces_and_deletes(iot):
    name = unique("sp")
    iot.create_security_profile(
        securityProfileName=name, behaviors=[PORTS_BEHAVIOR],
        alertTargets={"SNS": {"alertTargetArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:t",
                              "roleArn": f"arn:aws:iam::{ACCOUNT}:role/r"}},
        additionalMetricsToRetain=["aws:num-disconnects"],
        metricsExportConfig={"mqttTopic": "export/metrics", "roleArn": f"arn:aws:iam::{ACCOUNT}:role/export"},
    )
    created = iot.describe_security_profile(securityProfileName=name)

    updated = iot.update_security_profile(securityProfileName=name, behaviors=[MESSAGES_BEHAVIOR], expectedVersion=1)
    assert updated["version"] == 2
    assert updated["behaviors"] == [MESSAGES_BEHAVIOR]
    assert updated["alertTargets"] == created["alertTargets"]  # omitted members keep their value
    assert updated["creationDate"] == created["creationDate"]
    assert updated["lastModifiedDate"] >= created["lastModifiedDate"]

    with pytest.raises(iot.exceptions.VersionConflictException) as exc:
        iot.update_security_profile(securityProfileName=name, securityProfileDescription="x", expectedVersion=1)
    assert error_of(exc) == ("VersionConflictException", 409)

    cleared = iot.update_security_profile(
        securityProfileName=name, deleteBehaviors=True, deleteAlertTargets=True,
        deleteAdditionalMetricsToRetain=True, deleteMetricsExportConfig=True)
    assert cleared["version"] == 3
    assert cleared.get("behaviors", []) == []
    for member in ("alertTargets", "additionalMetricsToRetain", "metricsExportConfig"):
        assert member not in cleared
    described = iot.describe_security_profile(securityProfileName=name)
    assert described["version"] == 3 and "alertTargets" not in described

    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.update_security_profile(securityProfileName=name, behaviors=[PORTS_BEHAVIOR], deleteBehaviors=True)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.update_security_profile(securityProfileName=unique("missing"), securityProfileDescription="x")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.update_security_profile(securityProfileName=name, behaviors=[{**PORTS_BEHAVIOR, "metric": "nope"}])
    assert iot.describe_security_profile(securityProfileName=name)["version"] == 3  # a rejected update changes nothing


def test_delete_with_expected_version(iot):
    name = unique("sp")
    iot.create_security_profile(securityProfileName=name)
    with pytest.raises(iot.exceptions.VersionConflictException):
        iot.delete_security_profile(securityProfileName=name, expectedVersion=7)
    iot.delete_security_profile(securityProfileName=name, expectedVersion=1)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_security_profile(securityProfileName=name)
    iot.delete_security_profile(securityProfileName=name)  # deleting what is gone succeeds


def test_list_filters_by_metric_and_dimension(iot):
    metric = unique("cm").replace("-", "_")
    dimension = unique("dim")
    iot.create_custom_metric(metricName=metric, metricType="number")
    iot.create_dimension(name=dimension, type="TOPIC_FILTER", stringValues=["telemetry/#"])
    with_metric, with_dimension, plain = unique("spm"), unique("spd"), unique("spp")
    iot.create_security_profile(securityProfileName=with_metric, behaviors=[
        {"name": "battery", "metric": metric, "criteria": {"comparisonOperator": "greater-than",
                                                             "value": {"number": 20}}}])
    iot.create_security_profile(securityProfileName=with_dimension, behaviors=[
        {"name": "sent", "metric": "aws:num-messages-sent",
         "metricDimension": {"dimensionName": dimension, "operator": "NOT_IN"},
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 10}, "durationSeconds": 300}}])
    iot.create_security_profile(securityProfileName=plain)

    def names(**kwargs):  # type: ignore[no-untyped-def]
        pages = iot.get_paginator("list_security_profiles").paginate(**kwargs)
        return [p["name"] for page in pages for p in page["securityProfileIdentifiers"]]

    assert names(metricName=metric) == [with_metric]
    assert names(dimensionName=dimension) == [with_dimension]
    assert {with_metric, with_dimension, plain} <= set(names())
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.list_security_profiles(metricName=metric, dimensionName=dimension)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.delete_custom_metric(metricName=metric)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.delete_dimension(name=dimension)


def test_list_paginates_every_profile_once(fresh_service):
    iot = fresh_service.client()
    created = sorted(f"page-{i:03d}" for i in range(57))
    for name in created:
        iot.create_security_profile(securityProfileName=name)
    first = iot.list_security_profiles(maxResults=10)
    assert len(first["securityProfileIdentifiers"]) == 10 and first["nextToken"]
    pages = list(iot.get_paginator("list_security_profiles").paginate(PaginationConfig={"PageSize": 7}))
    listed = [p["name"] for page in pages for p in page["securityProfileIdentifiers"]]
    assert listed == created
    assert len(pages) == 9 and "nextToken" not in pages[-1]
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.list_security_profiles(nextToken="not-a-token")


def test_attach_detach_and_targets(iot):
    profile = unique("sp")
    iot.create_security_profile(securityProfileName=profile, behaviors=[PORTS_BEHAVIOR])
    parent, child = unique("plant"), unique("line")
    iot.create_thing_group(thingGroupName=parent)
    iot.create_thing_group(thingGroupName=child, parentGroupName=parent)

    targets = [arn(f"thinggroup/{child}"), arn("all/registered-things"),
               arn("all/unregistered-things"), arn("all/things")]
    for target in targets:
        iot.attach_security_profile(securityProfileName=profile, securityProfileTargetArn=target)
    iot.attach_security_profile(securityProfileName=profile, securityProfileTargetArn=targets[0])  # idempotent

    listed = iot.list_targets_for_security_profile(securityProfileName=profile)["securityProfileTargets"]
    assert sorted(t["arn"] for t in listed) == sorted(targets)

    direct = iot.list_security_profiles_for_target(securityProfileTargetArn=arn(f"thinggroup/{parent}"))
    assert direct["securityProfileTargetMappings"] == []
    recursive = iot.list_security_profiles_for_target(securityProfileTargetArn=arn(f"thinggroup/{parent}"),
                                                      recursive=True)
    assert recursive["securityProfileTargetMappings"] == [{
        "securityProfileIdentifier": {"name": profile, "arn": arn(f"securityprofile/{profile}")},
        "target": {"arn": arn(f"thinggroup/{child}")}}]

    with pytest.raises(iot.exceptions.ResourceNotFoundException) as exc:
        iot.attach_security_profile(securityProfileName=profile,
                                    securityProfileTargetArn=arn(f"thinggroup/{unique('nogroup')}"))
    assert error_of(exc) == ("ResourceNotFoundException", 404)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.attach_security_profile(securityProfileName=profile, securityProfileTargetArn="arn:aws:iot:x:y:z/w")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.attach_security_profile(securityProfileName=unique("nosp"), securityProfileTargetArn=targets[1])
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_targets_for_security_profile(securityProfileName=unique("nosp"))

    iot.detach_security_profile(securityProfileName=profile, securityProfileTargetArn=targets[0])
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.detach_security_profile(securityProfileName=profile, securityProfileTargetArn=targets[0])
    remaining = iot.list_targets_for_security_profile(securityProfileName=profile)["securityProfileTargets"]
    assert sorted(t["arn"] for t in remaining) == sorted(targets[1:])

    iot.delete_security_profile(securityProfileName=profile)
    mapped = iot.list_security_profiles_for_target(securityProfileTargetArn=arn("all/unregistered-things"))
    assert profile not in [m["securityProfileIdentifier"]["name"] for m in mapped["securityProfileTargetMappings"]]


def test_five_profiles_per_target_then_limit_exceeded(iot):
    group = unique("limits")
    iot.create_thing_group(thingGroupName=group)
    target = arn(f"thinggroup/{group}")
    names = [unique(f"sp{i}") for i in range(6)]
    for name in names:
        iot.create_security_profile(securityProfileName=name)
    for name in names[:5]:
        iot.attach_security_profile(securityProfileName=name, securityProfileTargetArn=target)
    with pytest.raises(iot.exceptions.LimitExceededException) as exc:
        iot.attach_security_profile(securityProfileName=names[5], securityProfileTargetArn=target)
    assert error_of(exc) == ("LimitExceededException", 410)
    mapped = iot.list_security_profiles_for_target(securityProfileTargetArn=target)["securityProfileTargetMappings"]
    assert sorted(m["securityProfileIdentifier"]["name"] for m in mapped) == sorted(names[:5])


def test_deleting_a_group_detaches_its_profiles(iot):
    group, profile = unique("gone"), unique("sp")
    iot.create_thing_group(thingGroupName=group)
    iot.create_security_profile(securityProfileName=profile)
    iot.attach_security_profile(securityProfileName=profile, securityProfileTargetArn=arn(f"thinggroup/{group}"))
    iot.delete_thing_group(thingGroupName=group)
    assert iot.list_targets_for_security_profile(securityProfileName=profile)["securityProfileTargets"] == []


def test_created_profiles_survive_kill9(fresh_service):
    iot = fresh_service.client()
    group = "durable-group"
    iot.create_thing_group(thingGroupName=group)
    iot.create_security_profile(securityProfileName="durable", behaviors=[PORTS_BEHAVIOR])
    iot.attach_security_profile(securityProfileName="durable", securityProfileTargetArn=arn(f"thinggroup/{group}"))
    iot.update_security_profile(securityProfileName="durable", behaviors=[MESSAGES_BEHAVIOR])
    fresh_service.restart(hard=True)
    iot = fresh_service.client()
    described = iot.describe_security_profile(securityProfileName="durable")
    assert described["version"] == 2 and described["behaviors"] == [MESSAGES_BEHAVIOR]
    assert iot.list_targets_for_security_profile(securityProfileName="durable")["securityProfileTargets"] == [
        {"arn": arn(f"thinggroup/{group}")}]
