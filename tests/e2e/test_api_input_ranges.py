"""Out-of-range and mistyped request values, sent over HTTP as users send them: always a 400
InvalidRequestException worded as AWS words it, never a 500 or Python's type names.

Reproduces an outside-in trial: ``GET /violation-events?startTime=1e20`` (or ``inf``, ``-1e20``,
``1e308``) and the same on ``/metric-values`` answered 500 (botocore's timestamp parser raised
RuntimeError); ``1e15``, ``253402300800``, ``nan`` and a behavior ``count`` of 2^64 answered with
"type: <class 'float'>, valid types: <class 'datetime.datetime'>".
"""

from __future__ import annotations

import re
from urllib.parse import quote

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from iotdefender.contract.service_model import service_model
from iotdefender.controlplane.registry import IMPLEMENTED
from tests.support.processes import ACCESS_KEY, REGION, SECRET_KEY
from tests.support.signing import send_signed

MODEL = service_model()
BAD_TIMES = ["1e20", "-1e20", "inf", "-inf", "nan", "1e308", "", "abc", "253402300800", "1e15", "10000-01-01"]
AWS_WORDING = re.compile(r"^\d+ validation errors? detected: Value .* at '[^']+' failed to satisfy constraint: "
                         r"(Member|Map keys|Map value) must ")
#: Valid values of the other members of the served operations with timestamp inputs.
VALID = {"thingName": "dev-1", "metricName": "aws:all-bytes-out"}


def served_timestamp_inputs() -> list[tuple[str, str]]:
    """(operation, member) for every timestamp input of every operation this service serves."""
    out = []
    for name in sorted(IMPLEMENTED):
        shape = MODEL.operation_model(name).input_shape
        for member, member_shape in (shape.members.items() if shape is not None else []):
            if member_shape.type_name == "timestamp":
                out.append((name, member))
    return out


def url_of(service, operation_name: str, member: str, value: str) -> str:  # type: ignore[no-untyped-def]
    """The operation's request with ``value`` for ``member`` and valid values for the others."""
    operation = MODEL.operation_model(operation_name)
    query = []
    for name, shape in operation.input_shape.members.items():
        if name == member:
            text = value
        elif shape.type_name == "timestamp":
            text = "1000000000"
        elif name in operation.input_shape.required_members:
            text = VALID[name]
        else:
            continue
        assert shape.serialization.get("location") == "querystring", (operation_name, name)
        query.append(f"{shape.serialization.get('name', name)}={quote(text, safe='')}")
    return f"{service.endpoint}{operation.http['requestUri']}?{'&'.join(query)}"


def test_the_served_operations_have_timestamp_inputs():
    assert {"ListViolationEvents", "ListMetricValues"} <= {name for name, _ in served_timestamp_inputs()}


@pytest.mark.parametrize("operation_name, member", served_timestamp_inputs())
def test_out_of_range_timestamps_are_an_invalid_request(service, operation_name, member):
    assert send_signed("GET", url_of(service, operation_name, member, "1000000000")).status_code == 200
    answers = {value: send_signed("GET", url_of(service, operation_name, member, value)) for value in BAD_TIMES}
    wrong = {value: (answer.status_code, answer.headers.get("x-amzn-ErrorType"), answer.text)
             for value, answer in answers.items()
             if (answer.status_code, answer.headers.get("x-amzn-ErrorType")) != (400, "InvalidRequestException")
             or not AWS_WORDING.match(answer.json()["message"]) or f"at '{member}'" not in answer.json()["message"]}
    assert wrong == {}


@pytest.fixture(scope="module")
def unchecked(service):  # type: ignore[no-untyped-def]
    """boto3 without its client-side validation: what the AWS CLI or another SDK may send."""
    return boto3.client("iot", endpoint_url=service.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY,
                        config=Config(parameter_validation=False, retries={"max_attempts": 1, "mode": "standard"}))


def refusal(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == ("InvalidRequestException", 400)
    message = error["Error"]["Message"]
    assert AWS_WORDING.match(message) and "<class" not in message and "type:" not in message, message
    return message


@pytest.mark.parametrize("count, constraint", [(2**64, "Member must have value less than or equal to 9223372036854775807"),
                                               (10**23, "Member must have value less than or equal to 9223372036854775807"),
                                               (2**63, "Member must have value less than or equal to 9223372036854775807"),
                                               (2**64 - 1, "Member must have value less than or equal to"),
                                               ("12", "Member must be an integer"),
                                               (-1, "Member must have value greater than or equal to 0")])
def test_mistyped_members_name_the_member_and_the_constraint(unchecked, count, constraint):
    behavior = {"name": "b", "metric": "aws:all-bytes-in",
                "criteria": {"comparisonOperator": "less-than", "value": {"count": count}, "durationSeconds": 300}}
    message = refusal(lambda: unchecked.create_security_profile(securityProfileName="range-sp", behaviors=[behavior]))
    assert "at 'behaviors[0].criteria.value.count'" in message and constraint in message


def test_missing_and_mistyped_inputs_are_each_counted(unchecked):
    message = refusal(lambda: unchecked.create_custom_metric(metricName="range-cm", displayName=5))
    assert message.startswith("2 validation errors detected: ")
    assert "Value null at 'metricType' failed to satisfy constraint: Member must not be null" in message
    assert "Value '5' at 'displayName' failed to satisfy constraint: Member must be a string" in message


@pytest.mark.parametrize("role, quoted", [("short", "'short'"), ("", "''")])
def test_a_too_short_string_is_quoted_itself(unchecked, role, quoted):
    """botocore's range check gave the length as the value: 'short' was quoted as '5', '' as '0'."""
    message = refusal(lambda: unchecked.create_security_profile(securityProfileName="range-role", alertTargets={
        "SNS": {"alertTargetArn": "arn:aws:sns:us-east-1:123456789012:t", "roleArn": role}}))
    assert f"Value {quoted} at 'alertTargets.SNS.roleArn' failed to satisfy constraint: Member must have length " \
           "greater than or equal to 20" in message, message


def test_an_empty_list_is_quoted_as_a_list(unchecked):
    message = refusal(lambda: unchecked.create_dimension(name="range-dim", type="TOPIC_FILTER", stringValues=[],
                                                         clientRequestToken="range-dim-token"))
    assert "Value '[]' at 'stringValues' failed to satisfy constraint: Member must have length greater than or " \
           "equal to 1" in message, message


# The constraints botocore leaves to the service (max, pattern, enum; it checks min only), which
# therefore reach AWS CLI and boto3 users from the server: worded as AWS words them
# (``contract/validation.py`` cites where each wording comes from).

def test_a_too_long_name_is_refused_in_aws_words(unchecked):
    message = refusal(lambda: unchecked.create_security_profile(securityProfileName="n" * 129))
    assert message == (f"1 validation error detected: Value '{'n' * 100}...' at 'securityProfileName' failed to "
                       "satisfy constraint: Member must have length less than or equal to 128")


def test_a_name_off_its_pattern_is_refused_in_aws_words(unchecked):
    behavior = {"name": "bad name!", "metric": "aws:num-messages-sent",
                "criteria": {"comparisonOperator": "less-than", "value": {"count": 1}}}
    message = refusal(lambda: unchecked.create_security_profile(securityProfileName="range-pattern",
                                                                behaviors=[behavior]))
    assert message == ("1 validation error detected: Value 'bad name!' at 'behaviors[0].name' failed to satisfy "
                       "constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9:_-]+")


def test_a_value_outside_its_enum_is_refused_in_aws_words(unchecked):
    message = refusal(lambda: unchecked.create_dimension(name="range-enum", type="TOPIC", stringValues=["a/#"],
                                                         clientRequestToken="range-enum-token"))
    assert message == ("1 validation error detected: Value 'TOPIC' at 'type' failed to satisfy constraint: "
                       "Member must satisfy enum value set: [TOPIC_FILTER]")


def test_a_list_over_its_max_is_refused_in_aws_words(unchecked):
    topics = [f"site/{i}/#" for i in range(101)]
    message = refusal(lambda: unchecked.create_dimension(name="range-list", type="TOPIC_FILTER", stringValues=topics,
                                                         clientRequestToken="range-list-token"))
    shown = ("[" + ", ".join(topics))[:100]
    assert message == (f"1 validation error detected: Value '{shown}...' at 'stringValues' failed to satisfy "
                       "constraint: Member must have length less than or equal to 100")


def test_map_keys_are_refused_at_the_map_in_aws_words(unchecked):
    """AWS IoT's answer to the same attributes on UpdateThing (aws/aws-sdk-java#666)."""
    message = refusal(lambda: unchecked.create_thing(thingName="range-thing",
                                                     attributePayload={"attributes": {'"state"': "on"}}))
    assert message == ("""1 validation error detected: Value '{"state"=on}' at 'attributePayload.attributes' """
                       "failed to satisfy constraint: Map keys must satisfy constraint: [Member must have length "
                       "less than or equal to 128, Member must satisfy regular expression pattern: "
                       "[a-zA-Z0-9_.,@/:#-]+]")


def test_a_page_size_over_its_max_is_refused_in_aws_words(unchecked):
    message = refusal(lambda: unchecked.list_active_violations(maxResults=251))
    assert message == ("1 validation error detected: Value '251' at 'maxResults' failed to satisfy constraint: "
                       "Member must have value less than or equal to 250")
