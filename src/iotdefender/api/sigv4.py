"""SigV4 verification by recomputing the signature with botocore's own signer.

There is no well-kept verify-only SigV4 library for Python; botocore's ``SigV4Auth`` is the
reference implementation clients sign with, so recomputing with it over the request exactly as
received (raw path, raw query, the signed headers, the body) cannot drift from what boto3 and the
AWS CLI do. The same approach is used by moto (``moto/core/access_control.py``).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from iotdefender.api.credentials import AccessKey, CredentialStore
from iotdefender.contract.errors import ApiError

ACCEPTED_SERVICES = ("iot", "execute-api")  # current botocore signs "iot"; older SDKs "execute-api"
MAX_SKEW = timedelta(minutes=5)
_SIGV4_TIME = "%Y%m%dT%H%M%SZ"
_UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class SignedRequest:
    method: str
    host_url: str  # scheme://host[:port] as the client addressed us
    raw_path: str
    raw_query: str
    headers: dict[str, str]  # lower-case names
    body: bytes


def _signature_mismatch() -> ApiError:
    return ApiError(
        "InvalidSignatureException",
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. "
        "Consult the service documentation for details.",
    )


def _parse_authorization(header: str) -> dict[str, str]:
    algorithm, _, rest = header.partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        raise ApiError(
            "IncompleteSignatureException",
            f"Unsupported authorization algorithm {algorithm!r}: only AWS4-HMAC-SHA256 is accepted",
        )
    fields = {}
    for part in rest.split(","):
        key, _, value = part.strip().partition("=")
        fields[key] = value
    for needed in ("Credential", "SignedHeaders", "Signature"):
        if not fields.get(needed):
            raise ApiError(
                "IncompleteSignatureException",
                f"Authorization header requires '{needed}' parameter. Authorization={header}",
            )
    return fields


def verify(request: SignedRequest, store: CredentialStore, region: str, now: datetime) -> AccessKey:
    """Return the caller's key if the request is correctly signed, else raise a 403 ApiError."""
    authorization = request.headers.get("authorization")
    if not authorization:
        raise ApiError("MissingAuthenticationTokenException", "Missing Authentication Token")
    fields = _parse_authorization(authorization)
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise ApiError("IncompleteSignatureException", f"Credential is malformed: {fields['Credential']}")
    key_id, scope_date, scope_region, scope_service, _ = scope

    key = store.get(key_id)
    if key is None:
        raise ApiError("UnrecognizedClientException", "The security token included in the request is invalid.")
    token = request.headers.get("x-amz-security-token")
    if token is not None and (key.session_token is None or not hmac.compare_digest(
            token.encode("latin-1", "replace"), key.session_token.encode())):
        raise ApiError("UnrecognizedClientException", "The security token included in the request is invalid.")
    if key.session_token is not None and token is None:
        raise ApiError("UnrecognizedClientException", "The security token included in the request is invalid.")
    if scope_service not in ACCEPTED_SERVICES:
        raise ApiError("InvalidSignatureException", "Credential should be scoped to correct service: 'iot'.")
    if scope_region != region:
        raise ApiError(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region, not '{scope_region}'. Use '{region}'.",
        )

    amz_date = request.headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, _SIGV4_TIME).replace(tzinfo=timezone.utc)
    except ValueError:
        raise ApiError("IncompleteSignatureException", "X-Amz-Date header is missing or malformed") from None
    if scope_date != amz_date[:8]:
        raise ApiError(
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{scope_date}' != '{amz_date[:8]}'",
        )
    if signed_at < now - MAX_SKEW:
        raise ApiError(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than {(now - MAX_SKEW).strftime(_SIGV4_TIME)} "
            f"({now.strftime(_SIGV4_TIME)} - 5 min.)",
        )
    if signed_at > now + MAX_SKEW:
        raise ApiError(
            "InvalidSignatureException",
            f"Signature not yet current: {amz_date} is still later than "
            f"{(now + MAX_SKEW).strftime(_SIGV4_TIME)} ({now.strftime(_SIGV4_TIME)} + 5 min.)",
        )

    # A client may announce the body hash; it must be the real one (or explicitly unsigned).
    declared = request.headers.get("x-amz-content-sha256")
    if declared not in (None, _UNSIGNED_PAYLOAD) and declared != hashlib.sha256(request.body).hexdigest():
        raise _signature_mismatch()

    signed_names = [n for n in fields["SignedHeaders"].lower().split(";") if n]
    if "host" not in signed_names:
        raise ApiError("InvalidSignatureException", "'Host' must be a 'SignedHeader' in the AWS Authorization.")
    headers = {}
    for name in signed_names:
        if name not in request.headers:
            raise _signature_mismatch()
        headers[name] = request.headers[name]

    url = request.host_url + request.raw_path + (f"?{request.raw_query}" if request.raw_query else "")
    aws_request = AWSRequest(method=request.method, url=url, headers=headers, data=request.body)
    aws_request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(key.access_key_id, key.secret_access_key, key.session_token),
                       scope_service, scope_region)
    canonical = signer.canonical_request(aws_request)
    expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
    # compare_digest refuses str with non-ASCII characters (TypeError); headers arrive decoded as
    # latin-1, so their bytes are recovered exactly and a non-ASCII signature is just a mismatch.
    if not hmac.compare_digest(expected.encode("ascii"), fields["Signature"].encode("latin-1", "replace")):
        raise _signature_mismatch()
    return key
