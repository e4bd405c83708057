"""Custom metrics, dimensions and tags end to end, through boto3."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

ARN = "arn:aws:iot:us-east-1:123456789012:"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def test_custom_metric_lifecycle(iot):
    name = unique("battery")
    created = iot.create_custom_metric(metricName=name, metricType="number", displayName="Battery %",
                                       clientRequestToken="token-1", tags=[{"Key": "k", "Value": "v"}])
    assert created == {"metricName": name, "metricArn": ARN + f"custommetric/{name}",
                       "ResponseMetadata": created["ResponseMetadata"]}
    repeat = iot.create_custom_metric(metricName=name, metricType="number", clientRequestToken="token-1")
    assert repeat["metricArn"] == created["metricArn"]  # same token: idempotent
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException, match="different metric type"):
        iot.create_custom_metric(metricName=name, metricType="string-list", clientRequestToken="token-1")
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_custom_metric(metricName=name, metricType="number", clientRequestToken="token-2")
    described = iot.describe_custom_metric(metricName=name)
    assert described["metricType"] == "number" and described["displayName"] == "Battery %"
    assert isinstance(described["creationDate"], dt.datetime)
    updated = iot.update_custom_metric(metricName=name, displayName="Battery level")
    assert updated["displayName"] == "Battery level" and updated["metricType"] == "number"
    assert updated["lastModifiedDate"] >= described["lastModifiedDate"]
    assert iot.list_tags_for_resource(resourceArn=created["metricArn"])["tags"] == [{"Key": "k", "Value": "v"}]
    iot.delete_custom_metric(metricName=name)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_custom_metric(metricName=name)
    iot.delete_custom_metric(metricName=name)


@pytest.mark.parametrize("kwargs", [{"metricName": "aws:mine", "metricType": "number"},
                                    {"metricName": "ok_name", "metricType": "bogus"},
                                    {"metricName": "bad name", "metricType": "number"}])
def test_custom_metric_validation(iot, kwargs):
    with pytest.raises(iot.exceptions.InvalidRequestException) as exc:
        iot.create_custom_metric(**kwargs)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_dimension_lifecycle_and_in_use_guard(iot):
    name = unique("topics")
    created = iot.create_dimension(name=name, type="TOPIC_FILTER", stringValues=["telemetry/#", "cmd/+/set"],
                                   clientRequestToken="dim-1")
    assert created["arn"] == ARN + f"dimension/{name}"
    assert iot.create_dimension(name=name, type="TOPIC_FILTER", stringValues=["telemetry/#", "cmd/+/set"],
                                clientRequestToken="dim-1")["arn"] == created["arn"]  # a retry
    assert iot.create_dimension(name=name, type="TOPIC_FILTER", stringValues=["cmd/+/set", "telemetry/#"],
                                clientRequestToken="dim-1")["arn"] == created["arn"]  # the same filters in another order
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException, match="different string values"):
        iot.create_dimension(name=name, type="TOPIC_FILTER", stringValues=["other/#"], clientRequestToken="dim-1")
    described = iot.describe_dimension(name=name)
    assert described["type"] == "TOPIC_FILTER" and described["stringValues"] == ["telemetry/#", "cmd/+/set"]
    assert iot.update_dimension(name=name, stringValues=["only/#"])["stringValues"] == ["only/#"]
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_dimension(name=unique("bad"), type="NOT_A_TYPE", stringValues=["a"])
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_dimension(name=unique("long"), type="TOPIC_FILTER", stringValues=["x" * 257])
    profile = unique("sp")
    iot.create_security_profile(securityProfileName=profile, additionalMetricsToRetainV2=[
        {"metric": "aws:num-messages-sent", "metricDimension": {"dimensionName": name}}])
    with pytest.raises(iot.exceptions.InvalidRequestException) as exc:
        iot.delete_dimension(name=name)
    assert profile in exc.value.response["Error"]["Message"]
    iot.delete_security_profile(securityProfileName=profile)
    iot.delete_dimension(name=name)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_dimension(name=name)


@pytest.mark.parametrize("bad", ["a/#/b", "a/b+", "a/b#", "#/a", "a/+x/c"])
def test_topic_filters_mqtt_forbids_are_refused(iot, bad):
    """A filter no MQTT topic can match (# not the whole last level, + not a whole level) would make
    a dimension that silently counts nothing: refused on create and on update, naming the value."""
    name = unique("filters")
    with pytest.raises(iot.exceptions.InvalidRequestException) as exc:
        iot.create_dimension(name=name, type="TOPIC_FILTER", stringValues=["ok/#", bad])
    message = exc.value.response["Error"]["Message"]
    assert f"Value '{bad}' at 'stringValues[1]'" in message and "MQTT topic filter" in message, message
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_dimension(name=name)
    iot.create_dimension(name=name, type="TOPIC_FILTER", stringValues=["+/#", "a/+/c", "${iot:ClientId}/#"])
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.update_dimension(name=name, stringValues=[bad])
    assert iot.describe_dimension(name=name)["stringValues"] == ["+/#", "a/+/c", "${iot:ClientId}/#"]
    iot.delete_dimension(name=name)


def test_quotas_are_limit_exceeded_410(fresh_service):
    iot = fresh_service.client()
    for i in range(10):
        iot.create_dimension(name=f"d{i}", type="TOPIC_FILTER", stringValues=["a/#"])
    with pytest.raises(iot.exceptions.LimitExceededException) as exc:
        iot.create_dimension(name="d10", type="TOPIC_FILTER", stringValues=["a/#"])
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410
    for i in range(100):
        iot.create_custom_metric(metricName=f"m{i:03d}", metricType="number")
    with pytest.raises(iot.exceptions.LimitExceededException):
        iot.create_custom_metric(metricName="m100", metricType="number")
    names = [n for page in iot.get_paginator("list_custom_metrics").paginate(PaginationConfig={"PageSize": 30})
             for n in page["metricNames"]]
    assert names == [f"m{i:03d}" for i in range(100)]
    assert [n for page in iot.get_paginator("list_dimensions").paginate() for n in page["dimensionNames"]] == [
        f"d{i}" for i in range(10)]


def test_tags_on_every_taggable_resource(iot):
    profile, group = unique("sp"), unique("grp")
    arns = [iot.create_security_profile(securityProfileName=profile)["securityProfileArn"],
            iot.create_thing_group(thingGroupName=group)["thingGroupArn"],
            iot.create_custom_metric(metricName=unique("cm"), metricType="number")["metricArn"],
            iot.create_dimension(name=unique("dim"), type="TOPIC_FILTER", stringValues=["a"])["arn"]]
    for arn in arns:
        iot.tag_resource(resourceArn=arn, tags=[{"Key": "env", "Value": "prod"}, {"Key": "team", "Value": "ot"}])
        iot.tag_resource(resourceArn=arn, tags=[{"Key": "env", "Value": "staging"}])
        iot.untag_resource(resourceArn=arn, tagKeys=["team"])
        assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == [{"Key": "env", "Value": "staging"}]
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.tag_resource(resourceArn=ARN + "securityprofile/does-not-exist", tags=[{"Key": "a", "Value": "b"}])
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_tags_for_resource(resourceArn="arn:aws:s3:::bucket")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.tag_resource(resourceArn=arns[0], tags=[{"Key": f"k{i}", "Value": "v"} for i in range(51)])


def test_tag_keys_beginning_with_aws_are_reserved(iot):
    """AWS keeps ``aws:`` tag keys (any case) for itself: no operation that takes tags sets or
    removes one, and nothing is created by a create call that carries one."""
    reserved = [{"Key": "AWS:CloudFormation:stack-name", "Value": "x"}]
    arn = iot.create_custom_metric(metricName=unique("cm"), metricType="number")["metricArn"]
    creates = {
        "security profile": lambda name: iot.create_security_profile(securityProfileName=name, tags=reserved),
        "thing group": lambda name: iot.create_thing_group(thingGroupName=name, tags=reserved),
        "custom metric": lambda name: iot.create_custom_metric(metricName=name, metricType="number", tags=reserved),
        "dimension": lambda name: iot.create_dimension(name=name, type="TOPIC_FILTER", stringValues=["a"],
                                                       tags=reserved),
    }
    for what, create in creates.items():
        with pytest.raises(iot.exceptions.InvalidRequestException, match="reserved"):
            create(unique("reserved"))
    with pytest.raises(iot.exceptions.InvalidRequestException, match="reserved"):
        iot.tag_resource(resourceArn=arn, tags=[{"Key": "team", "Value": "ot"}, {"Key": "aws:owner", "Value": "me"}])
    with pytest.raises(iot.exceptions.InvalidRequestException, match="reserved"):
        iot.untag_resource(resourceArn=arn, tagKeys=["aws:owner"])
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == []  # the allowed key was not set either
    names = {p["name"] for p in iot.list_security_profiles()["securityProfileIdentifiers"]}
    assert not any(name.startswith("reserved") for name in names)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_custom_metric(metricName=unique("cm"), metricType="number",
                                 tags=[{"Key": f"k{i}", "Value": "v"} for i in range(51)])
