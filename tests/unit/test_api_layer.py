"""The model-driven API layer in isolation: routing, parsing, validation and SigV4 with a fixed clock."""

from __future__ import annotations

import datetime as dt

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
from iotdefender.contract.validation import validate_input

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
    for body in (b"{not json", b"[1,2]", b'"text"'):
        with pytest.raises(ApiError) as exc:
            parse_request(op, {"securityProfileName": "sp"}, "", {}, body)
        assert exc.value.code == "InvalidRequestException"


def test_validation_adds_max_pattern_enum_to_botocore():
    op = SERVICE_MODEL.operation_model("CreateSecurityProfile")
    with pytest.raises(ApiError) as exc:
        validate_input(op.input_shape, {"securityProfileName": "x" * 129})
    assert "at most 128" in exc.value.message
    with pytest.raises(ApiError) as exc:
        validate_input(op.input_shape, {"securityProfileName": "ok", "securityProfileDescription": "tab\there"})
    assert "pattern" in exc.value.message
    with pytest.raises(ApiError) as exc:
        validate_input(op.input_shape, {"securityProfileName": "ok", "behaviors": "not a list"})
    assert "Value 'not a list' at 'behaviors' failed to satisfy constraint: Member must be a JSON array" in \
        exc.value.message
    # Java's \p{Graph} is ASCII only: AWS refuses non-ASCII descriptions, so do we.
    with pytest.raises(ApiError):
        validate_input(op.input_shape, {"securityProfileName": "ok", "securityProfileDescription": "café"})
    validate_input(op.input_shape, {"securityProfileName": "ok", "securityProfileDescription": "plain text!"})


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
