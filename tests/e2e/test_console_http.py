"""The console over plain HTTP, on SQLite and PostgreSQL: login, sessions, CSRF, bad input.

Every page must answer (no 500s) whatever the query string, refuse to show anything without a
session, refuse writes without the session's CSRF token, and escape what it prints.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from tests.support.mqtt import Device, report
from tests.support.processes import ACCESS_KEY, SECRET_KEY
from tests.support import plain_http

SERVICE_ARGS = ["--report-min-interval", "0", "--time-scale", "100"]
PAGES = ["/console/", "/console/metrics", "/console/things", "/console/things/x", "/console/certificates", "/console/profiles",
         "/console/profiles/new", "/console/violations", "/console/backtest", "/console/api/events",
         "/console/api/backtests/x", "/console/api/violations/x/evidence"]
FEW_PORTS = {"name": "few-ports", "metric": "aws:num-listening-tcp-ports",
             "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 2}}}


def logged_in(svc) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=svc.endpoint, follow_redirects=False, timeout=30)
    answer = client.post("/console/login", data={"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY})
    assert answer.status_code == 303
    page = client.get("/console/")
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    return client, token


def test_nothing_is_readable_without_a_session(service):
    client = httpx.Client(base_url=service.endpoint, follow_redirects=False)
    for path in PAGES:
        answer = client.get(path)
        if path.startswith("/console/api/"):
            assert answer.status_code == 401, path
        else:
            assert answer.status_code == 303 and answer.headers["location"].startswith("/console/login"), path
    assert client.post("/console/api/backtests", json={}).status_code == 401
    assert client.get("/console").headers["location"] == "/console/"
    assert client.get("/console/static/vendor/uPlot.iife.min.js").status_code == 200  # the only public files


def test_login_cookie_and_redirects(service):
    client = httpx.Client(base_url=service.endpoint, follow_redirects=False)
    refused = client.post("/console/login", data={"access_key_id": ACCESS_KEY, "secret_access_key": "nope-typed"})
    assert refused.status_code == 401 and "wrong secret" in refused.text
    assert f'name="access_key_id" autocomplete="username" required autofocus value="{ACCESS_KEY}"' in refused.text
    assert "nope-typed" not in refused.text  # the key ID comes back as typed, never the secret
    unknown = client.post("/console/login", data={"access_key_id": "AKIDNOBODY", "secret_access_key": SECRET_KEY})
    assert unknown.status_code == 401
    answer = client.post("/console/login", data={"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
                                                 "next": "https://elsewhere.example/steal"})
    assert answer.headers["location"] == "/console/"  # never redirected off the console
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    assert client.get("/console/").status_code == 200
    tampered = httpx.Client(base_url=service.endpoint, follow_redirects=False,
                            cookies={"iotdefender_console": client.cookies["iotdefender_console"][:-4] + "AAAA"})
    assert tampered.get("/console/").status_code == 303


def test_writes_need_the_csrf_token(service):
    client, token = logged_in(service)
    form = {"name": "csrf-check", "behaviors": "[]"}
    assert client.post("/console/profiles/new", data=form).status_code == 403
    assert client.post("/console/profiles/new", data={**form, "csrf": "forged"}).status_code == 403
    assert client.post("/console/api/backtests", json={"behaviors": [FEW_PORTS]}).status_code == 403
    assert all(p["name"] != "csrf-check" for p in service.client().list_security_profiles()["securityProfileIdentifiers"])
    created = client.post("/console/profiles/new", data={**form, "csrf": token})
    assert created.status_code == 303 and created.headers["location"] == "/console/profiles/csrf-check?created=1"
    again = client.post("/console/profiles/new", data={**form, "csrf": token})
    assert again.status_code == 409 and "ResourceAlreadyExistsException" in again.text  # AWS's status, as other forms
    broken = client.post("/console/profiles/csrf-check", data={"behaviors": "[{", "csrf": token})
    assert broken.status_code == 400 and "not valid JSON" in broken.text and "[{" in broken.text
    assert client.post("/console/profiles/csrf-check/delete", data={"csrf": token}).status_code == 303


@pytest.mark.parametrize("path", [
    "/console/violations?verification=BOGUS", "/console/violations?token=not-a-token",
    "/console/violations?view=history&range=99y&criteria=NOPE", "/console/metrics?metric=no-such-metric&group=none",
    "/console/metrics?metric=aws:num-listening-tcp-ports&range=7d", "/console/things?prefix=%25_&after=zzz",
    "/console/things/%3Cscript%3Ealert(1)%3C%2Fscript%3E", "/console/profiles/no-such-profile",
    "/console/api/backtests/nope", "/console/api/violations/nope/evidence", "/console/backtest?profile=missing",
    "/console/things/" + "x" * 200, "/console/violations?view=bogus",
])
def test_odd_queries_get_answers_not_failures(service, path):
    client, _ = logged_in(service)
    answer = client.get(path)
    assert answer.status_code in (200, 400, 404), (path, answer.status_code)
    assert "<script>alert(1)" not in answer.text


def test_live_stream_and_console_backtest(service):
    client, token = logged_in(service)
    iot = service.client()
    iot.create_security_profile(securityProfileName="http-live", behaviors=[FEW_PORTS])
    iot.create_thing_group(thingGroupName="http-g")
    iot.attach_security_profile(securityProfileName="http-live",
                                securityProfileTargetArn="arn:aws:iot:us-east-1:123456789012:thinggroup/http-g")
    iot.create_thing(thingName="http-dev")
    iot.add_thing_to_thing_group(thingGroupName="http-g", thingName="http-dev")
    events: list[str] = []
    with client.stream("GET", "/console/api/events") as stream:
        device = Device(service.mqtt_port, "http-dev")
        assert device.report(report(1, [1, 2, 3]))[0] == "json/accepted"
        device.close()
        for line in stream.iter_lines():
            events.append(line)
            if line.startswith("data:") and "http-dev" in line:
                break
    assert any(line.startswith("event: violation") for line in events)
    live = json.loads(events[-1].removeprefix("data:"))  # written as the page's tables write values
    assert live["metricValue"] == {"count": 3} and live["metricText"] == "3 ports", live
    started = client.post("/console/api/backtests", headers={"x-csrf-token": token},
                          json={"securityProfileName": "http-live", "startTime": time.time() - 60,
                                "endTime": time.time() + 1})
    assert started.status_code == 200, started.text
    job = started.json()
    for _ in range(100):
        if job["status"] in ("SUCCEEDED", "FAILED"):
            break
        time.sleep(0.1)
        job = client.get(f"/console/api/backtests/{job['backtestId']}").json()
    assert job["status"] == "SUCCEEDED"
    (behavior,) = job["result"]["behaviors"]
    assert behavior["devicesInAlarm"] == 1 and behavior["topThings"][0]["thingName"] == "http-dev"
    refused = client.post("/console/api/backtests", headers={"x-csrf-token": token}, json={"behaviors": "x"})
    assert refused.status_code == 400 and refused.json()["message"]


def test_links_to_devices_with_unusual_names(service):
    client, _ = logged_in(service)
    name = "odd?name %25 ü"
    device = Device(service.mqtt_port, name)
    assert device.report(report(1, [22]))[0] == "json/accepted"
    device.close()
    listing = client.get("/console/things", params={"prefix": "odd"})
    link = re.search(r'href="(/console/things/odd[^"]*)"', listing.text).group(1)
    page = client.get(link.replace("&amp;", "&"))
    assert page.status_code == 200 and "Device odd?name %25 ü" in page.text


def test_logout_revokes_the_session_server_side(service):
    client, token = logged_in(service)
    service.client().create_security_profile(securityProfileName="kept-after-logout")
    saved = client.cookies["iotdefender_console"]
    assert client.post("/console/logout", data={"csrf": token}).status_code == 303
    replay = httpx.Client(base_url=service.endpoint, follow_redirects=False, cookies={"iotdefender_console": saved})
    assert replay.get("/console/profiles").status_code == 303  # back to the login page
    deleted = replay.post("/console/profiles/kept-after-logout/delete", data={"csrf": token})
    assert deleted.status_code == 303 and deleted.headers["location"].startswith("/console/login")
    assert service.client().describe_security_profile(securityProfileName="kept-after-logout")
    assert replay.get("/console/api/events").status_code == 401


def test_security_headers_on_every_console_response(service):
    client, _ = logged_in(service)
    for answer in (client.get("/console/"), client.get("/console/login"), client.get("/console/profiles/new"),
                   client.get("/console/static/console.js"), client.get("/console/api/backtests/x"),
                   plain_http.get(service.endpoint + "/console/violations", follow_redirects=False)):
        policy = answer.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, answer.url
        assert "unsafe-inline" not in policy
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "same-origin"
    assert "onsubmit=" not in client.get("/console/profiles/new").text  # no inline script left to block


@pytest.mark.parametrize("path", ["/console/things?prefix=a%00b", "/console/metrics?metric=aws%00x",
                                  "/console/things/a%00b", "/console/violations?thing=a%00b",
                                  "/console/api/violations/a%00b/evidence", "/console/metrics?group=%01"])
def test_control_characters_in_console_urls_are_a_400(service, path):
    client, _ = logged_in(service)
    assert client.get(path).status_code == 400, path


def test_failed_logins_are_throttled_per_address_and_per_key(fresh_service):
    svc = fresh_service

    def login(key: str, secret: str, source: str = "127.0.0.1") -> httpx.Response:
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(base_url=svc.endpoint, transport=transport, follow_redirects=False) as client:
            return client.post("/console/login", data={"access_key_id": key, "secret_access_key": secret})

    for _ in range(10):
        assert login(ACCESS_KEY, "wrong").status_code == 401
    throttled = login(ACCESS_KEY, SECRET_KEY)  # even the right secret waits now
    assert throttled.status_code == 429 and 1 <= int(throttled.headers["retry-after"]) <= 600
    assert "Too many failed logins" in throttled.text
    assert login("AKIDSOMEONEELSE00000", "x").status_code == 429  # the address is throttled
    assert login(ACCESS_KEY, SECRET_KEY, source="127.0.0.2").status_code == 429  # and so is the key
    assert login("AKIDSOMEONEELSE00000", "x", source="127.0.0.2").status_code == 401  # others are not
    log = svc.log_path.read_text()
    assert log.count("console_login_failed") == 11 and "console_login_throttled" in log


def test_failed_logins_and_console_writes_are_logged(service):
    client, token = logged_in(service)
    client.post("/console/profiles/new", data={"name": "logged-write", "behaviors": "[]", "csrf": token})
    client.post("/console/profiles/new", data={"name": "logged-write-2", "behaviors": "[]", "csrf": "forged"})
    plain_http.post(service.endpoint + "/console/login", data={"access_key_id": "AKIDLOGGED0000000000",
                                                          "secret_access_key": "nope"})
    lines = service.log_path.read_text().splitlines()
    assert any("console_write" in line and "/console/profiles/new" in line and ACCESS_KEY in line
               and "303" in line for line in lines)
    assert any("console_write_refused" in line and "csrf" in line for line in lines)
    assert any("console_login_failed" in line and "AKIDLOGGED0000000000" in line for line in lines)


def test_rough_edges_over_http(service):
    """A cleared description is cleared; an unknown view is a 400; a mistyped device is a 404;
    thresholds for a behavior the backtest does not have are refused (console and API alike)."""
    client, token = logged_in(service)
    iot = service.client()
    iot.create_security_profile(securityProfileName="described", securityProfileDescription="to be cleared")
    version = iot.describe_security_profile(securityProfileName="described")["version"]
    saved = client.post("/console/profiles/described", data={"description": "", "behaviors": "[]",
                                                             "version": str(version), "csrf": token})
    assert saved.status_code == 303
    assert iot.describe_security_profile(securityProfileName="described").get("securityProfileDescription", "") == ""

    bogus = client.get("/console/violations?view=bogus")
    assert bogus.status_code == 400 and "Unknown view" in bogus.text
    missing = client.get("/console/things/no-such-devicee")
    assert missing.status_code == 404 and "no-such-devicee" in missing.text
    device = Device(service.mqtt_port, "edge-http-device")  # unregistered, but it reports: it exists
    assert device.report(report(1, [22]))[0] == "json/accepted"
    device.close()
    assert client.get("/console/things/edge-http-device").status_code == 200

    refused = client.post("/console/api/backtests", headers={"x-csrf-token": token},
                          json={"behaviors": [FEW_PORTS], "thresholds": {"Nope": [1, 2]}})
    assert refused.status_code == 400
    assert "Nope" in refused.json()["message"] and "few-ports" in refused.json()["message"]
