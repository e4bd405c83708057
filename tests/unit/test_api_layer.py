"""The model-driven API layer in isolation: routing, parsing, validation and SigV4 with a fixed clock."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from iotdefender.api.credentials import AccessKey, CredentialStore
from iotdefender.contract.errors import ApiError
from iotdefender.api.protocol import parse_request, serialize_response
from iotdefender.contract.timestamps import epoch_seconds
from iotdefender.api.routing import RouteNotFound, Router
from iotdefender.contract.service_model import service_model
from iotdefender.api.sigv4 import SignedRequest, verify
from iotdefender.contract.validation import behavior_problems, validate_input, validate_value

SERVICE_MODEL = service_model()

ROUTER = Router(SERVICE_MODEL)


@pytest.mark.parametrize(
    "method, path, operation, params",
    [
        ("POST", "/security-profiles/sp%3A1", "CreateSecurityProfile", {"securityProfileName": "sp:1"}),
        ("PUT", "/security-profiles/sp/targets", "AttachSecurityProfile", {"securityProfileName": "sp"}),
        ("GET", "/security-profiles", "ListSecurityProfiles", {}),
        ("PUT", "/thing-groups/addThingToThingGroup", "AddThingToThingGroup", {}),
        ("GET", "/thing-groups/addThingToThingGroup", "DescribeThingGroup", {"thingGroupName": "addThingToThingGroup"}),
        ("GET", "/things/t1/thing-groups", "ListThingGroupsForThing", {"thingName": "t1"}),
        ("POST", "/violations/verification-state/abc", "PutVerificationStateOnViolation", {"violationId": "abc"}),
    ],
)
def test_routes_come_from_the_model(method, path, operation, params):
    match = ROUTER.match(method, path, set())
    assert match.operation.name == operation
    assert match.path_params == params


def test_every_model_operation_is_routable_to_itself():
    for name in SERVICE_MODEL.operation_names:
        op = SERVICE_MODEL.operation_model(name)
        path, _, query = op.http["requestUri"].partition("?")
        concrete = path.replace("{", "x").replace("+}", "").replace("}", "")
        keys = {q.split("=")[0] for q in query.split("&") if q}
        # A concrete path may legitimately hit a more literal sibling route; it must hit *a*
        # route with the same method and template shape.
        assert ROUTER.match(op.http["method"], concrete, keys).operation.http["method"] == op.http["method"]


def test_unknown_path_and_method():
    with pytest.raises(RouteNotFound, match="unknown path"):
        ROUTER.match("GET", "/no/such/thing/here/at/all", set())
    with pytest.raises(RouteNotFound, match="method not allowed"):
        ROUTER.match("PATCH", "/security-profiles", set())


def test_query_timestamps_booleans_and_body_members_are_typed():
    op = SERVICE_MODEL.operation_model("ListViolationEvents")
    params = parse_request(op, {}, "startTime=2024-01-02T03%3A04%3A05Z&endTime=1704168245&listSuppressedAlerts=true"
                                   "&maxResults=10", {}, b"")
    assert params == {"startTime": 1704164645.0, "endTime": 1704168245.0, "listSuppressedAlerts": True,
                      "maxResults": 10}
    with pytest.raises(ApiError) as exc:
        parse_request(op, {}, "startTime=yesterday&endTime=1", {}, b"")
    assert exc.value.code == "InvalidRequestException" and "startTime" in exc.value.message


def test_body_errors_are_invalid_request():
    op = SERVICE_MODEL.operation_model("CreateSecurityProfile")
    for body, words in ((b"{not json", "not valid JSON"), (b"[1,2]", "must be a JSON object"),
                        (b'"text"', "must be a JSON object"), (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
                        (b'{"behaviors": ' + b"1" * 5000 + b"}", "number out of range"),
                        (b'{"a": "\\ud800"}', "not valid JSON")):
        with pytest.raises(ApiError) as exc:
            parse_request(op, {"securityProfileName": "sp"}, "", {}, body)
        assert exc.value.code == "InvalidRequestException" and words in exc.value.message, exc.value.message


def test_a_large_integer_in_a_body_stays_an_integer():
    """orjson read an integer past 2**64 as a float, refused as "Value '1e+23' ... must be an integer"."""
    op = SERVICE_MODEL.operation_model("CreateSecurityProfile")
    body = b'{"behaviors": [{"name": "b", "criteria": {"value": {"count": 100000000000000000000000}}}]}'
    params = parse_request(op, {"securityProfileName": "sp"}, "", {}, body)
    assert params["behaviors"][0]["criteria"]["value"]["count"] == 10**23


def refusal(operation: str, params: dict[str, Any]) -> str:
    with pytest.raises(ApiError) as exc:
        validate_input(SERVICE_MODEL.operation_model(operation).input_shape, params)
    assert (exc.value.code, exc.value.status) == ("InvalidRequestException", 400)
    return exc.value.message


def test_validation_adds_max_pattern_enum_to_botocore():
    assert refusal("CreateSecurityProfile", {"securityProfileName": "x" * 129}) == (
        f"1 validation error detected: Value '{'x' * 100}...' at 'securityProfileName' failed to satisfy "
        "constraint: Member must have length less than or equal to 128")
    assert refusal("CreateSecurityProfile", {"securityProfileName": "ok", "securityProfileDescription": "tab\there"}) == (
        "1 validation error detected: Value 'tab\there' at 'securityProfileDescription' failed to satisfy "
        "constraint: Member must satisfy regular expression pattern: [\\p{Graph}\\x20]*")
    assert "Value 'not a list' at 'behaviors' failed to satisfy constraint: Member must be a JSON array" in \
        refusal("CreateSecurityProfile", {"securityProfileName": "ok", "behaviors": "not a list"})
    # Java's \p{Graph} is ASCII only: AWS refuses non-ASCII descriptions, so do we.
    assert "regular expression pattern" in refusal(
        "CreateSecurityProfile", {"securityProfileName": "ok", "securityProfileDescription": "café"})
    validate_input(SERVICE_MODEL.operation_model("CreateSecurityProfile").input_shape,
                   {"securityProfileName": "ok", "securityProfileDescription": "plain text!"})


def test_each_broken_constraint_is_worded_as_aws_words_it():
    behavior = {"name": "bad name!", "metric": "aws:num-messages-sent",
                "criteria": {"comparisonOperator": "below", "value": {"count": 1}}}
    assert refusal("CreateSecurityProfile", {"securityProfileName": "a b", "behaviors": [behavior]}) == (
        "3 validation errors detected: "
        "Value 'a b' at 'securityProfileName' failed to satisfy constraint: Member must satisfy regular "
        "expression pattern: [a-zA-Z0-9:_-]+; "
        "Value 'bad name!' at 'behaviors[0].name' failed to satisfy constraint: Member must satisfy regular "
        "expression pattern: [a-zA-Z0-9:_-]+; "
        "Value 'below' at 'behaviors[0].criteria.comparisonOperator' failed to satisfy constraint: Member must "
        "satisfy enum value set: [less-than, less-than-equals, greater-than, greater-than-equals, in-cidr-set, "
        "not-in-cidr-set, in-port-set, not-in-port-set, in-set, not-in-set]")
    topics = [f"t/{i}" for i in range(101)]
    assert refusal("CreateDimension", {"name": "d", "type": "TOPIC_FILTER", "stringValues": topics,
                                       "clientRequestToken": "x"}) == (
        f"1 validation error detected: Value '{('[' + ', '.join(topics))[:100]}...' at 'stringValues' failed to "
        "satisfy constraint: Member must have length less than or equal to 100")
    assert refusal("ListActiveViolations", {"maxResults": 251}) == (
        "1 validation error detected: Value '251' at 'maxResults' failed to satisfy constraint: Member must have "
        "value less than or equal to 250")


def test_map_keys_and_values_are_reported_at_the_map_as_aws_iot_does():
    """AWS IoT's own answer to UpdateThing (aws/aws-sdk-java#666), on the same shapes."""
    message = refusal("CreateThing", {"thingName": "t", "attributePayload": {"attributes": {
        '"state"': '{"reported":{"device_id":"ABCD"}}'}}})
    quoted = '''Value '{"state"={"reported":{"device_id":"ABCD"}}}' at 'attributePayload.attributes' '''
    assert message == (
        f"2 validation errors detected: {quoted}failed to satisfy constraint: Map keys must satisfy constraint: "
        "[Member must have length less than or equal to 128, Member must satisfy regular expression pattern: "
        "[a-zA-Z0-9_.,@/:#-]+]; "
        f"{quoted}failed to satisfy constraint: Map value must satisfy constraint: [Member must have length less "
        "than or equal to 800, Member must satisfy regular expression pattern: [a-zA-Z0-9_.,@/:#=\\[\\]-]*]")
    assert refusal("CreateSecurityProfile", {"securityProfileName": "p", "alertTargets": {"EMAIL": {
        "alertTargetArn": "arn:aws:sns:us-east-1:123456789012:t", "roleArn": "arn:aws:iam::123456789012:role/r"}}}
                   ).endswith("at 'alertTargets' failed to satisfy constraint: Map keys must satisfy constraint: "
                              "[Member must satisfy enum value set: [SNS]]")


def test_a_map_over_its_max_is_quoted_as_a_map():
    tags = {f"k{i}": "v" for i in range(51)}
    with pytest.raises(ApiError) as exc:
        validate_value(SERVICE_MODEL.shape_for("TagMap"), tags, "tags")
    assert exc.value.message == (
        f"1 validation error detected: Value '{('{' + ', '.join(f'k{i}=v' for i in range(51)))[:100]}...' at "
        "'tags' failed to satisfy constraint: Member must have length less than or equal to 50")
    validate_value(SERVICE_MODEL.shape_for("TagMap"), dict(list(tags.items())[:50]), "tags")


def test_a_range_inside_a_behavior_is_refused_in_the_behavior_checks_words():
    """AWS answers ValidateSecurityProfileBehaviors with "Behavior Authorization is malformed.
    consecutiveDatapointsToAlarm 100000 should be in range[1,10]" (AWS CLI example): its request
    validation let that through, so Create refuses it in those words too, after the request's own."""
    behavior = {"name": "Authorization", "metric": "aws:num-authorization-failures",
                "criteria": {"comparisonOperator": "greater-than", "value": {"count": 12},
                             "consecutiveDatapointsToAlarm": 100000}}
    assert refusal("CreateSecurityProfile", {"securityProfileName": "p", "behaviors": [behavior]}) == (
        "Behavior Authorization is malformed. consecutiveDatapointsToAlarm 100000 should be in range[1,10]")
    assert refusal("CreateSecurityProfile", {"securityProfileName": "p q", "behaviors": [behavior]}).startswith(
        "1 validation error detected: Value 'p q' at 'securityProfileName'")
    assert behavior_problems(SERVICE_MODEL.shape_for("Behavior"), {**behavior, "name": "a b"}) == [
        "Behavior a b is malformed. name 'a b' does not match the pattern [a-zA-Z0-9:_-]+",
        "Behavior a b is malformed. consecutiveDatapointsToAlarm 100000 should be in range[1,10]"]


def test_output_timestamps_are_epoch_seconds_with_milliseconds():
    op = SERVICE_MODEL.operation_model("DescribeSecurityProfile")
    status, headers, body = serialize_response(op, {"securityProfileName": "sp", "creationDate": 1560278102.52849,
                                                    "behaviors": None})
    assert status == 200 and body == b'{"securityProfileName":"sp","creationDate":1560278102.528}'
    assert epoch_seconds("2019-06-11T18:35:02.528Z") == pytest.approx(1560278102.528)


STORE = CredentialStore([AccessKey("AKIDUNITTEST00000000", "unit-secret")])
NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.timezone.utc)


def _signed(body: bytes = b"{}", when: dt.datetime = NOW, secret: str = "unit-secret") -> SignedRequest:
    request = AWSRequest(method="POST", url="http://127.0.0.1:8080/security-profiles/a%3Ab?x=1&a=%20", data=body)
    request.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
    auth = SigV4Auth(Credentials("AKIDUNITTEST00000000", secret), "iot", "us-east-1")
    request.headers["X-Amz-Date"] = request.context["timestamp"]
    request.headers["host"] = "127.0.0.1:8080"
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    request.headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential=AKIDUNITTEST00000000/{request.context['timestamp'][:8]}/us-east-1/iot/"
        f"aws4_request, SignedHeaders=host;x-amz-date, Signature={signature}")
    headers = {k.lower(): v for k, v in request.headers.items()}
    return SignedRequest("POST", "http://127.0.0.1:8080", "/security-profiles/a%3Ab", "x=1&a=%20", headers, body)


def test_sigv4_accepts_a_correct_signature_and_refuses_changes():
    assert verify(_signed(), STORE, "us-east-1", NOW).access_key_id == "AKIDUNITTEST00000000"
    original = _signed()
    for changed in (
        SignedRequest(**{**original.__dict__, "raw_path": "/security-profiles/a%3Ac"}),
        SignedRequest(**{**original.__dict__, "raw_query": "x=2&a=%20"}),
        SignedRequest(**{**original.__dict__, "method": "PATCH"}),
    ):
        with pytest.raises(ApiError) as exc:
            verify(changed, STORE, "us-east-1", NOW)
        assert exc.value.code == "InvalidSignatureException" and exc.value.status == 403
    with pytest.raises(ApiError) as exc:
        verify(_signed(secret="other"), STORE, "us-east-1", NOW)
    assert exc.value.code == "InvalidSignatureException"


def test_sigv4_clock_window_is_five_minutes():
    verify(_signed(when=NOW - dt.timedelta(minutes=4, seconds=59)), STORE, "us-east-1", NOW)
    with pytest.raises(ApiError, match="Signature expired"):
        verify(_signed(when=NOW - dt.timedelta(minutes=5, seconds=1)), STORE, "us-east-1", NOW)
    with pytest.raises(ApiError, match="not yet current"):
        verify(_signed(when=NOW + dt.timedelta(minutes=5, seconds=1)), STORE, "us-east-1", NOW)
