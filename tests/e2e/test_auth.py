"""SigV4 on every request: what is accepted and each way a request is refused with AWS's 403s."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import botocore.auth
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.processes import ACCESS_KEY, REGION, SECRET_KEY, ServiceProcess
from tests.support import plain_http


def signed(method: str, url: str, body: bytes = b"", service: str = "iot", secret: str = SECRET_KEY,
           key: str = ACCESS_KEY, region: str = REGION, headers: dict[str, str] | None = None) -> AWSRequest:
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials(key, secret), service, region).add_auth(request)
    return request


def send(request: AWSRequest, **changes: object) -> httpx.Response:
    url = changes.get("url", request.url)
    body = changes.get("body", request.body or b"")
    return plain_http.request(request.method, url, headers=dict(request.headers.items()), content=body)


def assert_refused(response: httpx.Response, code: str) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["x-amzn-ErrorType"] == code
    assert response.json()["message"]


def test_both_signing_names_are_accepted(service):
    for name in ("iot", "execute-api"):
        response = send(signed("GET", service.endpoint + "/security-profiles"), ) if name == "iot" else send(
            signed("GET", service.endpoint + "/security-profiles", service=name))
        assert response.status_code == 200, response.text
        assert "securityProfileIdentifiers" in response.json()


def test_unsigned_request_is_missing_authentication_token(service):
    response = plain_http.get(service.endpoint + "/security-profiles")
    assert_refused(response, "MissingAuthenticationTokenException")


def test_unknown_key_and_wrong_secret(service):
    iot = service.client(key="AKIDUNKNOWNUNKNOWN00")
    with pytest.raises(iot.exceptions.ClientError) as exc:
        iot.list_security_profiles()
    assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    iot = service.client(secret="wrong-secret")
    with pytest.raises(iot.exceptions.ClientError) as exc:
        iot.list_security_profiles()
    assert exc.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_tampered_body_path_and_query_are_refused(service):
    url = service.endpoint + "/security-profiles/tamper-me"
    request = signed("POST", url, b'{"securityProfileDescription": "original"}',
                     headers={"Content-Type": "application/json"})
    assert_refused(send(request, body=b'{"securityProfileDescription": "changed!"}'), "InvalidSignatureException")
    assert_refused(send(request, url=service.endpoint + "/security-profiles/tamper-you"), "InvalidSignatureException")
    listing = signed("GET", service.endpoint + "/security-profiles?maxResults=5")
    assert_refused(send(listing, url=service.endpoint + "/security-profiles?maxResults=6"), "InvalidSignatureException")
    # The untouched request goes through, so the refusals above are about the tampering.
    assert send(request).status_code == 200


@pytest.mark.parametrize("offset_minutes, phrase", [(-6, "Signature expired"), (6, "Signature not yet current")])
def test_clock_skew_over_five_minutes(service, monkeypatch, offset_minutes, phrase):
    skewed = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(minutes=offset_minutes)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: skewed)
    response = send(signed("GET", service.endpoint + "/security-profiles"))
    assert_refused(response, "InvalidSignatureException")
    assert phrase in response.json()["message"]


def test_within_skew_is_accepted(service, monkeypatch):
    skewed = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(minutes=4)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: skewed)
    assert send(signed("GET", service.endpoint + "/security-profiles")).status_code == 200


def test_wrong_region_scope_is_refused(service):
    assert_refused(send(signed("GET", service.endpoint + "/security-profiles", region="eu-west-1")),
                   "InvalidSignatureException")


def test_session_tokens_rejected_unless_configured(service):
    iot = service.client(token="temporary-session-token")
    with pytest.raises(iot.exceptions.ClientError) as exc:
        iot.list_security_profiles()
    assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_configured_session_token_and_credentials_file(tmp_path):
    credentials = tmp_path / "keys"
    credentials.write_text(
        "[ops]\naws_access_key_id = AKIDOPSOPSOPSOPSOPS1\naws_secret_access_key = ops-secret\n"
        "[ci]\naws_access_key_id = AKIDCICICICICICICIC1\naws_secret_access_key = ci-secret\n"
        "aws_session_token = ci-token\n")
    svc = ServiceProcess(data_dir=Path(tempfile.mkdtemp()), env={}, extra_args=["--credentials", str(credentials)])
    svc.start()
    try:
        assert svc.client(key="AKIDOPSOPSOPSOPSOPS1", secret="ops-secret").list_things()["things"] == []
        ci = svc.client(key="AKIDCICICICICICICIC1", secret="ci-secret", token="ci-token")
        assert ci.list_things()["things"] == []
        no_token = svc.client(key="AKIDCICICICICICICIC1", secret="ci-secret")
        with pytest.raises(no_token.exceptions.ClientError) as exc:
            no_token.list_things()
        assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"
        with pytest.raises(ci.exceptions.ClientError):
            svc.client(key=ACCESS_KEY, secret=SECRET_KEY).list_things()  # env keys are not in use here
    finally:
        svc.stop()
