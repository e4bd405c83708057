"""Out-of-range and mistyped inputs: always InvalidRequestException, worded as AWS words it.

Every timestamp member of every model operation (query string, path or JSON body, however deep)
is fed values that broke the parser or the validator: 1e20 and infinities made botocore's
timestamp parser raise RuntimeError (a 500), 1e15 or NaN came back with botocore's client-side
wording ("type: <class 'float'>, valid types: <class 'datetime.datetime'>").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

from iotdefender.api.protocol import parse_request
from iotdefender.contract.errors import ApiError
from iotdefender.contract.service_model import service_model
from iotdefender.contract.timestamps import epoch_seconds
from iotdefender.contract.validation import validate_input

MODEL = service_model()
BAD_TIMES: list[Any] = ["1e20", "-1e20", "inf", "-inf", "nan", "1e308", "", "abc", "253402300800", "1e15",
                        "10000-01-01T00:00:00Z", "0001-01-01T00:00:00+05:00"]
BAD_BODY_TIMES: list[Any] = [1e20, -1e20, 1e308, 253402300800, 1e15, 2**64, "", "abc", "inf", "nan", True, [], {}]
AWS_WORDING = re.compile(r"^\d+ validation errors? detected: Value .* at '[^']+' failed to satisfy constraint: "
                         r"Member must ")


def aws_worded(message: str) -> bool:
    return bool(AWS_WORDING.match(message)) and "<class" not in message and "type:" not in message


def timestamp_paths(shape: Shape, path: tuple[str, ...] = (), seen: frozenset[str] = frozenset()
                    ) -> Iterator[tuple[str, ...]]:
    """Member paths (list items as ``[]``) of every timestamp inside ``shape``."""
    if shape.type_name == "timestamp":
        yield path
    elif isinstance(shape, StructureShape) and shape.name not in seen:
        for name, member in shape.members.items():
            yield from timestamp_paths(member, (*path, name), seen | {shape.name})
    elif isinstance(shape, ListShape):
        yield from timestamp_paths(shape.member, (*path, "[]"), seen)
    elif isinstance(shape, MapShape):
        yield from timestamp_paths(shape.value, (*path, "{}"), seen)


def timestamp_inputs() -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for name in MODEL.operation_names:
        shape = MODEL.operation_model(name).input_shape
        if shape is not None:
            out.extend((name, path) for path in timestamp_paths(shape))
    return out


def nest(path: tuple[str, ...], value: Any) -> Any:
    """The JSON document that puts ``value`` at ``path``."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if head == "[]":
        return [nest(rest, value)]
    if head == "{}":
        return {"k": nest(rest, value)}
    return {head: nest(rest, value)}


def json_text(value: Any) -> bytes:
    """``value`` as JSON text; integers of any size (orjson writes at most 64 bits)."""
    return str(value).encode() if isinstance(value, int) and not isinstance(value, bool) else orjson.dumps(value)


def parse_and_validate(operation: OperationModel, query: str, body: bytes) -> dict[str, Any]:
    params = parse_request(operation, {}, query, {}, body)
    validate_input(operation.input_shape, params)
    return params


def test_the_model_has_query_and_body_timestamps():
    located = {MODEL.operation_model(n).input_shape.members[p[0]].serialization.get("location")
               for n, p in timestamp_inputs()}
    assert {"querystring", None} <= located and len(timestamp_inputs()) > 10


@pytest.mark.parametrize("operation_name, path", timestamp_inputs())
def test_every_timestamp_input_refuses_out_of_range_values_as_invalid_request(operation_name, path):
    operation = MODEL.operation_model(operation_name)
    member = operation.input_shape.members[path[0]]
    location = member.serialization.get("location")
    if location == "querystring":
        wire = member.serialization.get("name") or path[0]
        values = [(f"{wire}={v}", b"", v) for v in BAD_TIMES]
    elif location is None:
        values = [("", orjson.dumps(nest(path, "V")).replace(b'"V"', json_text(v)), v) for v in BAD_BODY_TIMES]
    else:
        pytest.skip(f"{location} timestamps are not in the model")
    for query, body, value in values:
        with pytest.raises(ApiError) as refused:
            parse_and_validate(operation, query, body)
        assert refused.value.code == "InvalidRequestException" and refused.value.status == 400, value
        assert path[0] in refused.value.message and aws_worded(refused.value.message), refused.value.message


def test_timestamps_in_range_still_parse():
    operation = MODEL.operation_model("ListViolationEvents")
    assert parse_and_validate(operation, "startTime=-62135596800&endTime=253402300799", b"") == {
        "startTime": -62135596800.0, "endTime": 253402300799.0}
    assert parse_and_validate(operation, "startTime=9999-12-31T23:59:59Z&endTime=1970-01-01T00:00:00%2B01:00",
                              b"") == {"startTime": 253402300799.0, "endTime": -3600.0}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e20, -1e20, pytest.param(10**400, id="10**400"),
                                   True, None, "x", object()])
def test_epoch_seconds_refuses_with_the_constraint(value):
    with pytest.raises(ValueError, match="Member must be a timestamp"):
        epoch_seconds(value)


def behavior_with_count(count: str) -> bytes:
    return (b'{"behaviors":[{"name":"b","metric":"aws:all-bytes-in","criteria":{"comparisonOperator":'
            b'"less-than","value":{"count":' + count.encode() + b'},"durationSeconds":300}}]}')


@pytest.mark.parametrize("count, constraint", [
    (str(2**64), "Member must have value less than or equal to 9223372036854775807"), ("1.5", "Member must be an integer"),
    ('"7"', "Member must be an integer"), ("true", "Member must be an integer"),
    ("-1", "Member must have value greater than or equal to 0")])
def test_mistyped_body_members_name_the_member_and_the_constraint(count, constraint):
    operation = MODEL.operation_model("CreateSecurityProfile")
    params = parse_request(operation, {"securityProfileName": "sp"}, "", {}, behavior_with_count(count))
    with pytest.raises(ApiError) as refused:
        validate_input(operation.input_shape, params)
    message = refused.value.message
    assert aws_worded(message) and "at 'behaviors[0].criteria.value.count'" in message and constraint in message


def test_every_problem_is_counted_and_missing_members_are_null():
    operation = MODEL.operation_model("ListMetricValues")
    with pytest.raises(ApiError) as refused:
        validate_input(operation.input_shape, {"thingName": "t", "maxResults": "ten"})
    message = refused.value.message
    assert message.startswith("4 validation errors detected: ")
    assert "Value null at 'metricName' failed to satisfy constraint: Member must not be null" in message
    assert "Value 'ten' at 'maxResults' failed to satisfy constraint: Member must be an integer" in message


@pytest.mark.parametrize("query, constraint", [("maxResults=1e3", "Member must be an integer"),
                                               ("listSuppressedAlerts=yes", "Member must be true or false")])
def test_mistyped_query_values_are_worded_as_aws(query, constraint):
    operation = MODEL.operation_model("ListViolationEvents")
    with pytest.raises(ApiError) as refused:
        parse_request(operation, {}, "startTime=0&endTime=1&" + query, {}, b"")
    assert aws_worded(refused.value.message) and constraint in refused.value.message


@pytest.mark.parametrize("operation_name, params, quoted, where", [
    ("CreateSecurityProfile", {"securityProfileName": "p", "alertTargets": {"SNS": {
        "alertTargetArn": "arn:aws:sns:us-east-1:123456789012:t", "roleArn": "short"}}}, "'short'",
     "alertTargets.SNS.roleArn"),
    ("CreateSecurityProfile", {"securityProfileName": "p", "alertTargets": {"SNS": {
        "alertTargetArn": "arn:aws:sns:us-east-1:123456789012:t", "roleArn": ""}}}, "''", "alertTargets.SNS.roleArn"),
    ("CreateDimension", {"name": "d", "type": "TOPIC_FILTER", "stringValues": [], "clientRequestToken": "x"},
     "'[]'", "stringValues"),
    ("CreateDimension", {"name": "d", "type": "TOPIC_FILTER", "stringValues": ["a/b", ""],
                         "clientRequestToken": "x"}, "''", "stringValues[1]"),
])
def test_a_length_problem_quotes_the_value_not_its_length(operation_name, params, quoted, where):
    """botocore's range check reports len(value) as the value: 'short' was quoted as '5'."""
    with pytest.raises(ApiError) as caught:
        validate_input(MODEL.operation_model(operation_name).input_shape, params)
    message = caught.value.message
    assert f"Value {quoted} at '{where}' failed to satisfy constraint: Member must have length greater than or " \
           "equal to" in message, message
    assert message.startswith("1 validation error detected: ")
