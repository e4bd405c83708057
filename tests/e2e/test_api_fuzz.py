"""Property tests against the live API: malformed paths, query strings and bodies never give a 500.

Requests are signed with botocore's signer over exactly what is sent, so they get past
authentication and exercise routing, parsing, validation and the handlers.
"""

from __future__ import annotations

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.processes import ACCESS_KEY, REGION, SECRET_KEY

PREFIXES = ["/security-profiles", "/security-profiles/", "/things/", "/thing-groups/", "/custom-metric/",
            "/dimensions/", "/security-profiles-for-target", "/tags", "/untag", "/active-violations",
            "/violation-events", "/metric-values", "/violations/verification-state/", "/custom-metrics",
            "/thing-groups/addThingToThingGroup", "/security-profile-behaviors/validate", "/_iotdefender/", "/"]
QUERY_NAMES = ["maxResults", "nextToken", "expectedVersion", "recursive", "securityProfileTargetArn", "startTime",
               "endTime", "thingName", "metricName", "dimensionName", "listSuppressedAlerts", "resourceArn",
               "verificationState", "behaviorCriteriaType", "x"]
segment = st.one_of(st.text(min_size=1, max_size=20), st.sampled_from(["sp", "a%3Ab", "%FF%FE", "%", "..", "targets",
                                                                        "things", "evidence", "x" * 200]))
query_value = st.one_of(st.text(max_size=20), st.integers(-10**20, 10**20).map(str),
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


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500 or response.status_code == 501, (response.status_code, response.text)
    if response.status_code >= 400:
        assert response.headers.get("x-amzn-ErrorType"), response.text
        assert "message" in response.json()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]), prefix=st.sampled_from(PREFIXES),
       segments=st.lists(segment, max_size=3), query=st.lists(st.tuples(st.sampled_from(QUERY_NAMES), query_value),
                                                               max_size=4), payload=body)
def test_signed_garbage_never_breaks_the_api(service, method, prefix, segments, query, payload):
    try:
        url = _url(service.endpoint, prefix, segments, query)
        request = AWSRequest(method=method, url=url, data=payload, headers={"Content-Type": "application/json"})
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "iot", REGION).add_auth(request)
    except Exception:
        return  # a request botocore itself cannot sign is not one a client can send
    try:
        response = httpx.request(method, request.url, headers=dict(request.headers.items()), content=payload,
                                 timeout=30)
    except (httpx.InvalidURL, httpx.LocalProtocolError):
        return  # nor is one the HTTP client refuses to put on the wire
    _check(response)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(PREFIXES), authorization=st.one_of(
    st.none(), st.text(max_size=80), st.sampled_from([
        "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA256 Credential=", "Basic dXNlcjpwYXNz",
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/2024/us-east-1/iot/aws4_request, SignedHeaders=host, Signature=0",
        "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=;;;, Signature=zz"])),
       amz_date=st.one_of(st.none(), st.text(max_size=20), st.just("20261124T000000Z")))
def test_unsigned_or_missigned_requests_are_403(service, prefix, authorization, amz_date):
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if amz_date is not None:
        headers["X-Amz-Date"] = amz_date
    try:
        response = httpx.get(service.endpoint + prefix, headers=headers, timeout=30)
    except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError):
        return  # the client refused to send such headers
    if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in "".join(headers.values())):
        # Control characters are not allowed in HTTP header values (RFC 9110 §5.5): the HTTP
        # parser refuses the request itself with 400 before any application code runs.
        assert response.status_code == 400
        return
    assert response.status_code == 403, response.text
    assert response.headers["x-amzn-ErrorType"] in ("MissingAuthenticationTokenException", "InvalidSignatureException",
                                                    "IncompleteSignatureException", "UnrecognizedClientException")


def test_service_is_healthy_after_fuzzing(service):
    assert httpx.get(service.endpoint + "/healthz").status_code == 200
    assert service.process.poll() is None


@pytest.mark.parametrize("path", ["/security-profiles/%ZZ", "/things/%C3%28", "/security-profiles/a%00b"])
def test_bad_percent_encoding(service, path):
    request = AWSRequest(method="GET", url=service.endpoint + path)
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "iot", REGION).add_auth(request)
    response = httpx.get(service.endpoint + path, headers=dict(request.headers.items()))
    _check(response)
    assert response.status_code in (400, 403, 404)
