"""Property tests against the live API, on SQLite and PostgreSQL: bad input never gives a 500.

Three generators: raw signed requests with malformed paths, query strings and bodies (routing and
parsing); every implemented operation called through boto3 with inputs drawn from its model
shapes, strings biased towards NUL, control characters and non-ASCII (validation and the
handlers, down to SQL); and unsigned or mis-signed requests with arbitrary bytes in the SigV4
headers (authentication). Requests are signed with botocore's signer over exactly what is sent,
so they get past authentication. Each generator's budget is ``IOTDEFENDER_FUZZ_EXAMPLES`` times
its share (default 1: about 20 s per database); the figures of a run (operations, requests,
statuses, 5xx) are written to ``test-artifacts/api-fuzz-<database>.json``.
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.model import Shape
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotdefender.contract.service_model import service_model
from iotdefender.controlplane.registry import IMPLEMENTED
from tests.support.processes import ACCESS_KEY, REGION, SECRET_KEY
from tests.support import plain_http

SERVICE_MODEL = service_model()

SCALE = float(os.environ.get("IOTDEFENDER_FUZZ_EXAMPLES", "1"))
ARTIFACTS = Path(os.environ.get("IOTDEFENDER_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
# Characters that broke something once or could: NUL (PostgreSQL cannot bind it), other C0/C1
# controls, DEL, line separators, non-ASCII letters, a character outside the BMP.
NASTY = ["\x00", "\x01", "\t", "\n", "\x7f", "\x85", "\u2028", "\u00e9", "\u540d", "\U0001f600", "%00", "'", "\\"]

PREFIXES = ["/security-profiles", "/security-profiles/", "/things/", "/thing-groups/", "/custom-metric/",
            "/dimensions/", "/security-profiles-for-target", "/tags", "/untag", "/active-violations",
            "/violation-events", "/metric-values", "/violations/verification-state/", "/custom-metrics",
            "/thing-groups/addThingToThingGroup", "/security-profile-behaviors/validate", "/_iotdefender/", "/"]
QUERY_NAMES = ["maxResults", "nextToken", "expectedVersion", "recursive", "securityProfileTargetArn", "startTime",
               "endTime", "thingName", "metricName", "dimensionName", "listSuppressedAlerts", "resourceArn",
               "verificationState", "behaviorCriteriaType", "x"]
hostile_char = st.one_of(st.just("\x00"), st.sampled_from(NASTY))  # NUL half of the time
nasty = st.builds(lambda a, n, b: a + n + b, st.text(alphabet="ab:_-", max_size=6), hostile_char,
                  st.text(alphabet="xyz", max_size=6))
segment = st.one_of(st.text(min_size=1, max_size=20), nasty, st.sampled_from(["sp", "a%3Ab", "%FF%FE", "%", "..", "targets",
                                                                        "things", "evidence", "x" * 200]))
query_value = st.one_of(st.text(max_size=20), nasty, st.integers(-10**20, 10**20).map(str),
                        st.sampled_from(["true", "false", "NaN", "", "2024-13-45T99:99:99Z", "-1", "0", "251"]))
json_value = st.recursive(st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False, allow_infinity=False)
                          | st.text(max_size=10),
                          lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                          max_leaves=25)
body = st.one_of(
    st.binary(max_size=200),
    json_value.map(lambda v: httpx.Request("POST", "http://x", json=v).content),
    st.fixed_dictionaries({}, optional={
        "behaviors": st.lists(st.dictionaries(st.sampled_from(["name", "metric", "criteria", "metricDimension"]),
                                              json_value, max_size=4), max_size=3),
        "securityProfileDescription": json_value, "tags": json_value, "stringValues": json_value,
        "type": json_value, "metricType": json_value, "verificationState": json_value, "thingName": json_value,
        "thingGroupName": json_value, "attributePayload": json_value,
    }).map(lambda v: httpx.Request("POST", "http://x", json=v).content),
    st.just(b'{"a":' * 200 + b"1" + b"}" * 200),
)


def _url(endpoint: str, prefix: str, segments: list[str], query: list[tuple[str, str]]) -> str:
    path = prefix + "/".join(httpx.URL("http://x/" + s).raw_path.decode().lstrip("/") if "%" not in s else s
                             for s in segments)
    return endpoint + path + ("?" + str(httpx.QueryParams(query)) if query else "")


class Tally:
    """What one database's fuzzing sent and got, for docs/api-hardening.md."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.requests = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.operations: set[str] = set()
        self.server_errors: list[str] = []

    def count(self, status: int, operation: str, detail: str) -> None:
        self.requests += 1
        self.statuses[status] += 1
        if operation in OPERATIONS:
            self.operations.add(operation)
        if status >= 500 and status != 501:
            self.server_errors.append(f"{operation} {status}: {detail}"[:500])

    def write(self, database: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"api-fuzz-{database}.json").write_text(json.dumps({
            "database": database, "seconds": round(time.monotonic() - self.started, 1),
            "requests": self.requests, "model_operations": f"{len(self.operations)} of {len(OPERATIONS)}",
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "server_errors": len(self.server_errors), "first_server_errors": self.server_errors[:20],
        }, indent=2))


@pytest.fixture(scope="module")
def tally(service):
    counts = Tally()
    yield counts
    counts.write("postgresql" if service.database_url else "sqlite")


def _check(response: httpx.Response, tally: Tally | None = None, operation: str = "raw") -> None:
    if tally is not None:
        tally.count(response.status_code, operation, response.text)
    assert response.status_code < 500 or response.status_code == 501, (response.status_code, response.text)
    if response.status_code >= 400:
        assert response.headers.get("x-amzn-ErrorType"), response.text
        assert "message" in response.json()


@settings(max_examples=int(250 * SCALE), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]), prefix=st.sampled_from(PREFIXES),
       segments=st.lists(segment, max_size=3), query=st.lists(st.tuples(st.sampled_from(QUERY_NAMES), query_value),
                                                               max_size=4), payload=body)
def test_signed_garbage_never_breaks_the_api(service, tally, method, prefix, segments, query, payload):
    try:
        url = _url(service.endpoint, prefix, segments, query)
        request = AWSRequest(method=method, url=url, data=payload, headers={"Content-Type": "application/json"})
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "iot", REGION).add_auth(request)
    except Exception:
        return  # a request botocore itself cannot sign is not one a client can send
    try:
        response = plain_http.request(method, request.url, headers=dict(request.headers.items()), content=payload,
                                 timeout=30)
    except (httpx.InvalidURL, httpx.LocalProtocolError):
        return  # nor is one the HTTP client refuses to put on the wire
    _check(response, tally, f"{method} {prefix}")


SIGNED_PREFIX = f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20261124/us-east-1/iot/aws4_request, SignedHeaders=host, "


@settings(max_examples=int(150 * SCALE), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(PREFIXES), authorization=st.one_of(
    st.none(), st.text(max_size=80), st.text(max_size=40).map(lambda t: SIGNED_PREFIX + "Signature=" + t),
    nasty.map(lambda t: SIGNED_PREFIX + "Signature=" + t), st.sampled_from([
        "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA256 Credential=", "Basic dXNlcjpwYXNz",
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/2024/us-east-1/iot/aws4_request, SignedHeaders=host, Signature=0",
        "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=;;;, Signature=zz"])),
       amz_date=st.one_of(st.none(), st.text(max_size=20), st.just("20261124T000000Z")),
       encoding=st.sampled_from(["utf-8", "latin-1"]))
def test_unsigned_or_missigned_requests_are_403(service, tally, prefix, authorization, amz_date, encoding):
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if amz_date is not None:
        headers["X-Amz-Date"] = amz_date
    try:  # as bytes, so that non-ASCII reaches the server as a client could send it
        response = plain_http.get(service.endpoint + prefix, headers={k: v.encode(encoding) for k, v in headers.items()},
                             timeout=30)
    except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError):
        return  # the client refused to send such headers
    tally.count(response.status_code, "unsigned " + prefix, response.text)
    if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in "".join(headers.values())):
        # Control characters are not allowed in HTTP header values (RFC 9110 §5.5): the HTTP
        # parser refuses the request itself with 400 before any application code runs.
        assert response.status_code == 400
        return
    assert response.status_code == 403, response.text
    assert response.headers["x-amzn-ErrorType"] in ("MissingAuthenticationTokenException", "InvalidSignatureException",
                                                    "IncompleteSignatureException", "UnrecognizedClientException")


ACCOUNT_ARN = "arn:aws:iot:us-east-1:123456789012:"
KNOWN = ["fuzz-sp", "fuzz-thing", "fuzz-group", "fuzz-dim", "fuzz-cm", "aws:all-bytes-in",
         "aws:num-listening-tcp-ports", "a/#", ACCOUNT_ARN + "all/things", ACCOUNT_ARN + "securityprofile/fuzz-sp",
         ACCOUNT_ARN + "thinggroup/fuzz-group", ACCOUNT_ARN + "thing/fuzz-thing", ACCOUNT_ARN + "dimension/fuzz-dim"]
name_like = st.one_of(st.sampled_from(KNOWN), nasty, st.text(max_size=12),
                      st.tuples(st.sampled_from(KNOWN), hostile_char).map("".join))
OPERATIONS = sorted(IMPLEMENTED)


def shape_strategy(shape: Shape, depth: int = 0) -> st.SearchStrategy[Any]:
    """Inputs of a model shape: right types, values anywhere from valid to hostile."""
    kind = shape.type_name
    if kind == "string":
        return st.one_of(st.sampled_from(shape.enum), name_like) if shape.enum else name_like
    if kind in ("integer", "long"):
        return st.one_of(st.integers(-5, 300), st.integers(-2**70, 2**70))
    if kind in ("double", "float"):
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "timestamp":
        return st.one_of(st.floats(0, 4e9), st.just(time.time()))
    if kind == "blob":
        return st.binary(max_size=20)
    if depth > 5:
        return st.nothing()
    if kind == "list":
        return st.lists(shape_strategy(shape.member, depth + 1), max_size=3)
    if kind == "map":
        return st.dictionaries(shape_strategy(shape.key, depth + 1), shape_strategy(shape.value, depth + 1),
                               max_size=3)
    required = set(shape.required_members)
    members = {n: shape_strategy(m, depth + 1) for n, m in shape.members.items()}
    return st.fixed_dictionaries({n: members[n] for n in required},
                                 optional={n: v for n, v in members.items() if n not in required})


def operation_call(name: str) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    shape = SERVICE_MODEL.operation_model(name).input_shape
    return (shape_strategy(shape) if shape is not None else st.just({})).map(lambda params: (name, params))


@pytest.fixture(scope="module")
def fuzz_client(service):
    """boto3 without its client-side validation, so it sends what a careless or hostile client would."""
    iot = boto3.client("iot", endpoint_url=service.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                       aws_secret_access_key=SECRET_KEY,
                       config=Config(parameter_validation=False, retries={"max_attempts": 1, "mode": "standard"}))
    setup = service.client()
    setup.create_security_profile(securityProfileName="fuzz-sp")
    setup.create_thing(thingName="fuzz-thing")
    setup.create_thing_group(thingGroupName="fuzz-group")
    setup.create_dimension(name="fuzz-dim", type="TOPIC_FILTER", stringValues=["a/#"])
    setup.create_custom_metric(metricName="fuzz-cm", metricType="number")
    return iot


@settings(max_examples=int(600 * SCALE), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=st.sampled_from(OPERATIONS).flatmap(operation_call))
def test_every_operation_with_model_shaped_hostile_input(fuzz_client, tally, call):
    from botocore import xform_name

    name, params = call
    try:
        answer = getattr(fuzz_client, xform_name(name))(**params)
        status, detail = answer["ResponseMetadata"]["HTTPStatusCode"], "ok"
    except ClientError as error:
        status, detail = error.response["ResponseMetadata"]["HTTPStatusCode"], str(error.response.get("Error"))
        assert error.response["Error"].get("Code"), error.response
    except (TypeError, ValueError, KeyError, UnicodeError):
        return  # botocore could not serialise these parameters: not a request anyone can send
    except HTTPClientError as error:
        # A member bound to a header (AttachThingPrincipal's x-amzn-principal) holding a line break:
        # the HTTP client refuses to send it, so no server ever sees it.
        assert "Invalid header value" in str(error), error
        return
    tally.count(status, name, f"{params!r} -> {detail}")
    # 501: an empty path label lands on an operation iotdefender does not implement (/things/ is
    # RegisterThing), answered NotImplementedException as the raw-request fuzzing allows.
    assert status < 500 or status == 501, (name, params, detail)


def minimal(shape: Shape) -> Any:
    """The smallest input of a shape that botocore can send: required members only."""
    kind = shape.type_name
    if kind == "string":
        return shape.enum[0] if shape.enum else "fuzz-sp"
    if kind in ("integer", "long", "double", "float"):
        return 1
    if kind == "timestamp":
        return time.time()
    if kind == "boolean":
        return False
    if kind in ("list", "map"):
        return [] if kind == "list" else {}
    return {n: minimal(shape.members[n]) for n in shape.required_members}


def string_inputs() -> list[tuple[str, str, bool]]:
    """(operation, member, is a list of strings) for every top-level string input of every operation."""
    out = []
    for name in OPERATIONS:
        shape = SERVICE_MODEL.operation_model(name).input_shape
        for member, member_shape in (shape.members.items() if shape is not None else []):
            if member_shape.type_name == "string":
                out.append((name, member, False))
            elif member_shape.type_name == "list" and member_shape.member.type_name == "string":
                out.append((name, member, True))
    return out


def test_nul_in_every_string_input_is_refused(service, fuzz_client, tally):
    """Deterministic sweep: each string input of each operation, with a NUL, is a 4xx on both databases."""
    from botocore import xform_name

    accepted = []
    for name, member, is_list in string_inputs():
        shape = SERVICE_MODEL.operation_model(name).input_shape
        params = minimal(shape)
        params[member] = ["fuzz\x00sp"] if is_list else "fuzz\x00sp"
        try:
            getattr(fuzz_client, xform_name(name))(**params)
            status = 200
        except ClientError as error:
            status = error.response["ResponseMetadata"]["HTTPStatusCode"]
        tally.count(status, name, f"NUL in {member}")
        if not 400 <= status < 500:
            accepted.append((name, member, status))
    assert accepted == []


def test_service_is_healthy_after_fuzzing(service, tally):
    assert plain_http.get(service.endpoint + "/healthz").status_code == 200
    assert service.process.poll() is None
    assert tally.server_errors == []


@pytest.mark.parametrize("path", ["/security-profiles/%ZZ", "/things/%C3%28", "/security-profiles/a%00b"])
def test_bad_percent_encoding(service, path):
    request = AWSRequest(method="GET", url=service.endpoint + path)
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "iot", REGION).add_auth(request)
    response = plain_http.get(service.endpoint + path, headers=dict(request.headers.items()))
    _check(response)
    assert response.status_code in (400, 403, 404)
