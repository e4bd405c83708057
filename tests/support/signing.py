"""SigV4-signed raw HTTP requests, for tests that send what boto3 would not (bad names, odd headers)."""

from __future__ import annotations

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.processes import ACCESS_KEY, REGION, SECRET_KEY
from tests.support import plain_http


def signed_headers(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> dict[str, str]:
    """The headers botocore's signer adds to exactly this request (the test key, the test region)."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "iot", REGION).add_auth(request)
    return dict(request.headers.items())


def send_signed(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    return plain_http.request(method, url, headers=signed_headers(method, url, body, headers), content=body, timeout=30)
