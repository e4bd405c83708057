"""Reproductions of bad input that once answered 500 or was accepted, on SQLite and PostgreSQL.

Each answer must be the same AWS-shaped refusal on both databases: a NUL byte in a name or a
tag value (PostgreSQL cannot bind it, so it used to be a 500 there and a 200 on SQLite), a forged
pagination token, non-ASCII bytes in SigV4 headers, an endless request header, an out-of-range
port in the broker-event intake.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import time

import httpx
import orjson
import pytest
from botocore.exceptions import ClientError

from tests.support.processes import ServiceProcess
from tests.support.signing import send_signed, signed_headers
from tests.support import plain_http

NUL = "dev\x00ice"
DAY = 86400


def refused(call, code: str = "InvalidRequestException", status: int = 400) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == (code, status), error
    return error["Error"]["Message"]


def test_nul_in_thing_names_is_an_invalid_request(iot):
    now = time.time()
    message = refused(lambda: iot.list_metric_values(thingName=NUL, metricName="aws:all-bytes-in",
                                                     startTime=now - DAY, endTime=now))
    assert "thingName" in message and "control characters" in message
    refused(lambda: iot.list_violation_events(thingName=NUL, startTime=now - DAY, endTime=now))
    refused(lambda: iot.list_active_violations(thingName=NUL))
    refused(lambda: iot.list_metric_values(thingName="ok", metricName="aws:all\x00", startTime=now - DAY,
                                           endTime=now))
    refused(lambda: iot.describe_thing(thingName=NUL))
    refused(lambda: iot.list_security_profiles_for_target(securityProfileTargetArn="arn:aws:iot:x\x00"))
    # The same names without the NUL are fine: the refusal is about the byte, not the call.
    assert iot.list_active_violations(thingName="dev.ice 1")["activeViolations"] == []


def test_nul_in_tag_values_and_strings_is_an_invalid_request(iot):
    arn = iot.create_dimension(name="hardening-dim", type="TOPIC_FILTER", stringValues=["a/#"])["arn"]
    refused(lambda: iot.tag_resource(resourceArn=arn, tags=[{"Key": "k", "Value": NUL}]))
    refused(lambda: iot.create_dimension(name="hardening-dim2", type="TOPIC_FILTER", stringValues=["a/\x00"]))
    refused(lambda: iot.create_custom_metric(metricName="hardening-cm", metricType="number",
                                             tags=[{"Key": "k", "Value": NUL}]))
    refused(lambda: iot.create_security_profile(securityProfileName="hardening-sp", tags=[{"Key": "k", "Value": NUL}]))
    refused(lambda: iot.create_security_profile(securityProfileName="hardening-sp", behaviors=[
        {"name": "b", "metric": "aws:all-bytes-in\x00",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 1}, "durationSeconds": 300}}]))
    refused(lambda: iot.untag_resource(resourceArn=arn + "\x00", tagKeys=["k"]))
    refused(lambda: iot.list_tags_for_resource(resourceArn=arn + "\x00"))
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == []  # nothing half-written
    with pytest.raises(ClientError):
        iot.describe_custom_metric(metricName="hardening-cm")


@pytest.mark.parametrize("after", ["v\x00", ["x\x00", 1], 2**70, 2**64 - 1, 1.5, ["a", "b"], [1.0, 1.5], ["x", 1.0],
                                   {"a": 1}, True])
def test_forged_next_tokens_are_an_invalid_request(iot, after):
    token = base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")
    now = time.time()
    refused(lambda: iot.list_active_violations(nextToken=token))
    refused(lambda: iot.list_violation_events(startTime=now - DAY, endTime=now, nextToken=token))
    refused(lambda: iot.list_things(nextToken=token))
    refused(lambda: iot.list_metric_values(thingName="t", metricName="aws:all-bytes-in", startTime=now - DAY,
                                           endTime=now, nextToken=token))


def test_a_next_token_belongs_to_the_listing_that_gave_it(iot):
    # A token was a key to continue after, whatever the listing: one of kind=a's things under
    # kind=b gave kind=b's things from that name on, and under ListThingGroups its groups.
    for n, kind in enumerate("aab"):
        iot.create_thing(thingName=f"token-scope-{n}", attributePayload={"attributes": {"kind": kind}})
    token = iot.list_things(attributeName="kind", attributeValue="a", maxResults=1)["nextToken"]
    rest = iot.list_things(attributeName="kind", attributeValue="a", maxResults=5, nextToken=token)  # another page size
    assert [t["thingName"] for t in rest["things"]] == ["token-scope-1"] and "nextToken" not in rest
    message = refused(lambda: iot.list_things(attributeName="kind", attributeValue="b", nextToken=token))
    assert "other parameters" in message
    refused(lambda: iot.list_things(nextToken=token))
    refused(lambda: iot.list_thing_groups(nextToken=token))
    arn = iot.create_security_profile(securityProfileName="token-scope")["securityProfileArn"]
    refused(lambda: iot.list_tags_for_resource(resourceArn=arn, nextToken=token))


def test_non_ascii_bytes_in_the_signature_are_a_403(service):
    url = service.endpoint + "/security-profiles"
    headers = signed_headers("GET", url)
    authorization = headers["Authorization"].rsplit("Signature=", 1)[0] + "Signature=\u00e9t\u00e9"
    for encoding in ("latin-1", "utf-8"):
        answer = plain_http.get(url, headers={**headers, "Authorization": authorization.encode(encoding)}, timeout=30)
        assert answer.status_code == 403, answer.text
        assert answer.headers["x-amzn-ErrorType"] == "InvalidSignatureException"


def test_a_body_that_is_not_utf8_is_an_invalid_request(service):
    """msgspec raises UnicodeDecodeError (not its DecodeError) for such bytes in a string: a 500."""
    for path, body in (("/certificate/register-no-ca", b'{"certificatePem": "\xff\xfe"}'),
                       ("/things/utf8", b'{"attributePayload": {"attributes": {"a": "\xc3"}}}')):
        answer = send_signed("POST", service.endpoint + path, body, {"Content-Type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert answer.headers["x-amzn-ErrorType"] == "InvalidRequestException" and "UTF-8" in answer.text


def test_extension_endpoints_check_names_too(service):
    evidence = send_signed("GET", service.endpoint + "/_iotdefender/violations/a%00b/evidence")
    assert evidence.status_code == 400 and evidence.headers["x-amzn-ErrorType"] == "InvalidRequestException"
    for spec in ({"securityProfileName": "sp\x00"},
                 {"behaviors": [{"name": "b", "metric": "aws:num-listening-tcp-ports", "criteria": {
                     "comparisonOperator": "less-than", "value": {"count": 1}}}], "targets": ["arn:x\x00"]}):
        answer = send_signed("POST", service.endpoint + "/_iotdefender/backtests", orjson.dumps(spec),
                             {"Content-Type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert "control characters" in answer.json()["message"] or "pattern" in answer.json()["message"]


def _raw_exchange(endpoint: str, head: bytes, filler: bytes, total: int) -> tuple[bytes, int]:
    """Send ``head`` then ``filler`` until ``total`` bytes or until the server answers; return
    the answer and how many filler bytes went out. Stops sending as soon as there is something
    to read, so the answer is read before the server's close can reset the connection."""
    host, port = endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        sent = 0
        while sent < total and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(filler)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(filler)
        answer = b""
        sock.settimeout(10)
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            answer += chunk
        return answer, sent


def test_an_endless_header_is_refused_with_431_early(service):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    answer, sent = _raw_exchange(service.endpoint, head, b"a" * 65536, 64 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"must not exceed 16384 bytes" in answer
    assert sent <= 4 * 1024 * 1024  # refused long before the 64 MB were sent
    assert plain_http.get(service.endpoint + "/healthz").status_code == 200


def test_header_limit_applies_to_heads_read_in_one_piece(service):
    url = service.endpoint + "/security-profiles"
    big = plain_http.get(url, headers={**signed_headers("GET", url), "X-Pad": "p" * 17000}, timeout=30)
    assert big.status_code == 431
    many = plain_http.get(service.endpoint + "/healthz", headers={f"X-Pad-{i}": "p" * 100 for i in range(200)})
    assert many.status_code == 431
    # Heads below the limit, signed ones included, are served as before.
    assert plain_http.get(url, headers={**signed_headers("GET", url), "X-Pad": "p" * 12000}, timeout=30).status_code == 200
    with httpx.Client(base_url=service.endpoint) as keep_alive:  # several requests on one connection
        for _ in range(3):
            assert keep_alive.get("/healthz", headers={"X-Pad": "p" * 8000}).status_code == 200


def test_broker_event_addresses_and_client_ids_are_checked(service):
    events = [{"type": "connect", "clientId": "port-ok", "ip": "192.0.2.7:8883"},
              {"type": "connect", "clientId": "port-bad", "ip": "192.0.2.7:999999"},
              {"type": "connect", "clientId": "not-ip", "ip": "example.com"},
              {"type": "connect", "clientId": "ip-number", "ip": 7},
              {"type": "connect", "clientId": "dev\x00ice", "ip": "192.0.2.8"},
              {"type": "disconnect", "clientId": "tab\there"}]
    answer = send_signed("POST", service.endpoint + "/_iotdefender/broker-events", orjson.dumps({"events": events}),
                         {"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    reasons = {r["index"]: r["reason"] for r in answer.json()["refused"]}
    assert answer.json()["accepted"] == 1 and sorted(reasons) == [1, 2, 3, 4, 5]
    assert "port 999999 is out of range 0-65535" in reasons[1]
    assert "control characters" in reasons[4] and "control characters" in reasons[5]


def _answer_within(endpoint: str, sent: bytes, drip: bytes = b"", every_s: float = 0.0,
                   limit_s: float = 20.0) -> tuple[bytes, float]:
    """Open a connection, send ``sent`` (then ``drip`` a byte every ``every_s``), and read until the
    server closes it; the answer and the seconds it took."""
    host, port = endpoint.removeprefix("http://").split(":")
    started = time.monotonic()
    answer = b""
    with socket.create_connection((host, int(port)), timeout=limit_s) as sock:
        sock.sendall(sent)
        for byte in drip:
            if select.select([sock], [], [], every_s)[0]:
                break
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
        while time.monotonic() - started < limit_s:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    return answer, time.monotonic() - started


def test_a_request_that_does_not_arrive_whole_in_time_is_answered_408_and_closed(tmp_path):
    """A declared body that never comes, a head sent a byte at a time, and a connection that sends
    nothing were held open as long as the client liked (over 150 s, each a file of the process's
    20,000: an outside-in test). With --api-read-timeout 2 each is closed after 2 s, the first two
    with 408; a request sent whole is served as before, on a kept-alive connection too."""
    svc = ServiceProcess(data_dir=tmp_path, extra_args=["--api-read-timeout", "2"])
    svc.start()
    try:
        no_body = b"POST /security-profiles/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        answer, took = _answer_within(svc.endpoint, no_body)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"RequestTimeoutException" in answer and b"within 2 s" in answer
        assert 1.5 < took < 10, took
        answer, took = _answer_within(svc.endpoint, b"GET /healthz HTTP/1.1\r\n", drip=b"X-Slow: " + b"s" * 100,
                                      every_s=0.3)
        assert answer.startswith(b"HTTP/1.1 408 ") and 1.5 < took < 10, (answer[:100], took)
        answer, took = _answer_within(svc.endpoint, b"")
        assert answer == b"" and 1.5 < took < 10, took
        with httpx.Client(base_url=svc.endpoint) as keep_alive:
            for _ in range(2):
                assert keep_alive.get("/healthz").status_code == 200
                time.sleep(1.2)  # idle between requests, within the 2 s
            assert keep_alive.get("/healthz").status_code == 200
    finally:
        svc.stop()
