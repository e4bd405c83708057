"""Call iotdefender's signed extension endpoints from Python, with the credentials boto3 would use.

The extensions (``/_iotdefender/...``) are outside botocore's model, so there is no generated
client; this signs plain requests with botocore's own SigV4 signer and credential chain
(environment, AWS_SHARED_CREDENTIALS_FILE, profiles), exactly as an AWS SDK call is signed.
"""

from __future__ import annotations

from typing import Any

import botocore.session
import httpx
import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest


class ExtensionError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


class ExtensionClient:
    def __init__(self, endpoint_url: str, region: str = "us-east-1", profile: str | None = None) -> None:
        session = botocore.session.Session(profile=profile)
        credentials = session.get_credentials()
        if credentials is None:
            raise ExtensionError(0, "NoCredentials", "no AWS credentials found (set AWS_SHARED_CREDENTIALS_FILE "
                                                     "to the data directory's credentials file)")
        self._credentials = credentials.get_frozen_credentials()
        self._endpoint = endpoint_url.rstrip("/")
        self._region = region
        self._http = httpx.Client(timeout=30.0)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = orjson.dumps(body) if body is not None else b""
        url = f"{self._endpoint}/_iotdefender/{path}"
        request = AWSRequest(method=method, url=url, data=data,
                             headers={"content-type": "application/json"} if data else {})
        SigV4Auth(self._credentials, "iot", self._region).add_auth(request)  # signs headers; the URL stays
        response = self._http.request(method, url, content=data, headers=dict(request.headers))
        document = response.json() if response.content else {}
        if response.status_code >= 400:
            code = response.headers.get("x-amzn-ErrorType", str(response.status_code))
            raise ExtensionError(response.status_code, code, str(document.get("message", document)))
        return document
