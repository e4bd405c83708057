"""Backtests end to end: live violations from real MQTT reports, then the same history replayed.

A backtest of the live profile over the range the devices reported in must produce exactly the
in-alarm / alarm-cleared events live evaluation stored — on the rows not compacted yet and again
once they are columnar segments — through the API extension and through ``iotdefender backtest``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from iotdefender.backtest.client import ExtensionClient, ExtensionError
from tests.support.mqtt import Device, report
from tests.support.processes import ACCESS_KEY, REGION, SECRET_KEY, ServiceProcess, free_port
from tests.support import plain_http

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"
COUNT = {"name": "few-ports", "metric": "aws:num-listening-tcp-ports",
         "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 2},
                      "consecutiveDatapointsToAlarm": 2, "consecutiveDatapointsToClear": 1}}
PORTS = {"name": "known-ports", "metric": "aws:listening-tcp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 443]}}}
# Per device, the listening ports of each report: violations, clears and devices that never violate.
SEQUENCES = {
    "bt-0": [[443], [443, 22, 80], [443, 22, 80], [443], [443, 22, 80], [443, 22, 80], [22]],
    "bt-1": [[443], [443, 22], [22]],
    "bt-2": [[8080, 1, 2], [8080, 1, 2], [8080, 1, 2], [443]],
    "bt-3": [[443, 22, 80], [443], [443, 22, 80], [443, 22, 80, 81]],
}


@pytest.fixture(scope="module")
def replayed():
    svc = ServiceProcess(data_dir=Path(tempfile.mkdtemp()), extra_args=[
        "--report-min-interval", "0", "--time-scale", "1000"])
    svc.start()
    iot = svc.client()
    iot.create_security_profile(securityProfileName="live", behaviors=[COUNT, PORTS])
    iot.attach_security_profile(securityProfileName="live", securityProfileTargetArn=ALL_THINGS)
    start = time.time() - 1
    devices = {thing: Device(svc.mqtt_port, thing) for thing in SEQUENCES}
    for step in range(max(len(s) for s in SEQUENCES.values())):
        for thing, sequence in SEQUENCES.items():
            if step < len(sequence):
                assert devices[thing].report(report(step + 1, sequence[step]))[0] == "json/accepted"
    for device in devices.values():
        device.close()
    end = time.time() + 1
    pages = iot.get_paginator("list_violation_events").paginate(startTime=start, endTime=end)
    live = sorted((e["thingName"], e["behavior"]["name"], e["violationEventType"],
                   round(e["violationEventTime"].timestamp(), 3)) for p in pages for e in p["violationEvents"])
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield svc, ExtensionClient(svc.endpoint, REGION), live, start, end, env
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    svc.stop()


def run_to_end(client: ExtensionClient, spec: dict) -> dict:
    job = client.call("POST", "backtests", spec)
    seen = {job["status"]}
    deadline = time.time() + 60
    while job["status"] in ("QUEUED", "RUNNING") and time.time() < deadline:
        time.sleep(0.1)
        job = client.call("GET", f"backtests/{job['backtestId']}")
        seen.add(job["status"])
    assert job["status"] == "SUCCEEDED", job
    assert job["progress"] == 1.0
    return job["result"]


def replayed_events(result: dict) -> list[tuple]:
    return sorted((e["thingName"], b["behaviorName"], e["violationEventType"], round(e["violationEventTime"], 3))
                  for b in result["behaviors"] for e in b["events"])


def test_backtest_of_the_live_profile_reproduces_live_events(replayed):
    svc, client, live, start, end, _ = replayed
    assert {e[2] for e in live} == {"in-alarm", "alarm-cleared"}
    assert {e[1] for e in live} == {"few-ports", "known-ports"}
    # Right away (rows not compacted yet), then once the compactor has made segments of them.
    for _ in range(2):
        result = run_to_end(client, {"securityProfileName": "live", "startTime": start, "endTime": end})
        assert replayed_events(result) == live
        methods = {b["behaviorName"]: b["method"] for b in result["behaviors"]}
        assert methods == {"few-ports": "vectorised", "known-ports": "engine"}
        counts = {b["behaviorName"]: (b["devicesEvaluated"], b["devicesInAlarm"]) for b in result["behaviors"]}
        assert counts["few-ports"] == (4, len({e[0] for e in live if e[1] == "few-ports" and e[2] == "in-alarm"}))
        time.sleep(2.5)  # the compactor runs every second at this time scale


def test_threshold_sweep_and_edited_behavior(replayed):
    svc, client, live, start, end, _ = replayed
    edited = dict(COUNT, criteria=dict(COUNT["criteria"], value={"count": 3}, consecutiveDatapointsToAlarm=1))
    result = run_to_end(client, {"behaviors": [edited], "startTime": start, "endTime": end,
                                 "thresholds": {"few-ports": [1, 2, 4]}})
    (behavior,) = result["behaviors"]
    # Only bt-3's last report has 4 ports.
    assert behavior["devicesInAlarm"] == 1 and behavior["topThings"][0]["thingName"] == "bt-3"
    sweep = {s["threshold"]["count"]: s["devicesInAlarm"] for s in behavior["sweep"]}
    assert sweep == {1: 4, 2: 3, 3: 1, 4: 0}


def test_backtest_command_line(replayed):
    svc, _, live, start, end, env = replayed
    done = subprocess.run([sys.executable, "-m", "iotdefender", "backtest", "--endpoint-url", svc.endpoint,
                           "--security-profile-name", "live", "--start", str(start), "--end", str(end), "--json"],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert replayed_events(json.loads(done.stdout)) == live
    text = subprocess.run([sys.executable, "-m", "iotdefender", "backtest", "--endpoint-url", svc.endpoint,
                           "--security-profile-name", "live", "--start", str(start), "--end", str(end),
                           "--threshold", "few-ports=1,5"], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "few-ports (vectorised)" in text.stdout and "<- current" in text.stdout
    assert "threshold {\"count\": 5}: 0 devices" in text.stdout
    mistyped = subprocess.run([sys.executable, "-m", "iotdefender", "backtest", "--endpoint-url", svc.endpoint,
                               "--security-profile-name", "live", "--start", str(start), "--end", str(end),
                               "--threshold", "Nope=1,2"], env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=120)
    assert mistyped.returncode == 2 and "Nope" in mistyped.stderr and "few-ports" in mistyped.stderr, mistyped.stderr
    nobody = subprocess.run([sys.executable, "-m", "iotdefender", "backtest", "--endpoint-url",
                             f"http://127.0.0.1:{free_port()}", "--security-profile-name", "live"],
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert nobody.returncode == 2 and "Traceback" not in nobody.stderr, nobody.stderr  # one line, not a traceback


def test_bad_backtest_requests_get_aws_shaped_errors(replayed):
    svc, client, *_ = replayed
    bad = dict(COUNT, criteria={"comparisonOperator": "in-port-set", "value": {"count": 2}})
    for spec, code, status in [
        ({"behaviors": [bad]}, "InvalidRequestException", 400),
        ({"behaviors": [COUNT], "startTime": 10, "endTime": 5}, "InvalidRequestException", 400),
        # instants no API timestamp can hold: refused, not queued as a job that fails later
        ({"behaviors": [COUNT], "startTime": -1e20}, "InvalidRequestException", 400),
        ({"behaviors": [COUNT], "startTime": 0, "endTime": 1e20}, "InvalidRequestException", 400),
        ({"behaviors": [{"name": "x" * 200, "metric": "aws:num-listening-tcp-ports"}]}, "InvalidRequestException",
         400),
        ({"securityProfileName": "missing"}, "ResourceNotFoundException", 404),
        ({"behaviors": [COUNT], "thresholds": {"few-ports": "high"}}, "InvalidRequestException", 400),
        ([1, 2], "InvalidRequestException", 400),
    ]:
        with pytest.raises(ExtensionError) as raised:
            client.call("POST", "backtests", spec)
        assert (raised.value.code, raised.value.status) == (code, status), spec
    with pytest.raises(ExtensionError) as raised:
        client.call("GET", "backtests/nope")
    assert raised.value.status == 404
    assert plain_http.post(svc.endpoint + "/_iotdefender/backtests", json={"behaviors": [COUNT]}).status_code == 403


def test_a_range_holding_more_than_a_backtest_reads_at_once_is_refused_before_anything_is_read(monkeypatch):
    """A backtest's fast path reads every datapoint of the range into the service process (about 120
    bytes each): at 100,000 devices a week outgrew the machine's memory and the service died. Past
    ``--backtest-max-datapoints`` a request is refused at once, saying what to change; a shorter
    range runs, and behaviors replayed report by report (streamed) are not bounded by it."""
    svc = ServiceProcess(data_dir=Path(tempfile.mkdtemp()), extra_args=[
        "--report-min-interval", "0", "--time-scale", "1000", "--backtest-max-datapoints", "12"])
    svc.start()
    try:
        iot = svc.client()
        iot.create_security_profile(securityProfileName="budget", behaviors=[COUNT, PORTS])
        iot.attach_security_profile(securityProfileName="budget", securityProfileTargetArn=ALL_THINGS)
        device = Device(svc.mqtt_port, "budget-dev")
        times = []
        for k in range(1, 21):
            times.append(time.time())
            assert device.report(report(k, [443]))[0] == "json/accepted"
            time.sleep(0.01)
        device.close()
        for key, value in {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                           "AWS_DEFAULT_REGION": REGION}.items():
            monkeypatch.setenv(key, value)
        client = ExtensionClient(svc.endpoint, REGION)
        whole = {"startTime": times[0] - 1, "endTime": times[-1] + 1}
        with pytest.raises(ExtensionError) as raised:
            client.call("POST", "backtests", {"behaviors": [COUNT], **whole})
        assert (raised.value.code, raised.value.status) == ("InvalidRequestException", 400)
        assert "about 20 datapoints of aws:num-listening-tcp-ports" in str(raised.value)
        assert "--backtest-max-datapoints" in str(raised.value)
        for spec in ({"behaviors": [COUNT], "startTime": times[0] - 1, "endTime": times[10]},  # the first 10
                     {"behaviors": [PORTS], **whole}):
            (result,) = run_to_end(client, spec)["behaviors"]
            assert result["datapoints"] == (10 if spec["behaviors"] == [COUNT] else 20)
    finally:
        svc.stop()
