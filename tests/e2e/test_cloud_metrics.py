"""Cloud-side metrics end to end: real MQTT clients misbehave on the service's broker, the window
closes, and the right datapoints, violations and events appear; the same through the intake."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time

import paho.mqtt.client as mqtt
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.mqtt import stop_network_loop
from tests.support.processes import ACCESS_KEY, REGION, SECRET_KEY, ServiceProcess, mosquitto_children, wait_for
from tests.support import plain_http

WINDOW = 2.0
ALL = "arn:aws:iot:us-east-1:123456789012:all/things"
BEHAVIORS = [
    {"name": "auth", "metric": "aws:num-authorization-failures",
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 1}}},
    {"name": "flood", "metric": "aws:num-messages-sent",
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 50}}},
    {"name": "telemetry", "metric": "aws:num-messages-sent", "metricDimension": {"dimensionName": "telemetry"},
     "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 3}}},
    {"name": "reconnects", "metric": "aws:num-connection-attempts",
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}},
    {"name": "network", "metric": "aws:source-ip-address",
     "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/8"]}}},
]


def client(port: int, client_id: str, **kwargs) -> mqtt.Client:  # type: ignore[no-untyped-def]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if kwargs.get("username"):
        c.username_pw_set(kwargs["username"], kwargs.get("password"))
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(0.2)
    return c


def setup_profile(iot) -> None:  # type: ignore[no-untyped-def]
    iot.create_dimension(name="telemetry", type="TOPIC_FILTER", stringValues=["telemetry/#"])
    iot.create_security_profile(securityProfileName="broker-view", behaviors=BEHAVIORS)
    iot.attach_security_profile(securityProfileName="broker-view", securityProfileTargetArn=ALL)
    iot.create_thing(thingName="idle-sensor")


def wait_for_window(iot, thing: str, metric: str, timeout: float = 20.0) -> list:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while True:
        now = dt.datetime.now(dt.timezone.utc)
        values = iot.list_metric_values(thingName=thing, metricName=metric, startTime=now - dt.timedelta(minutes=5),
                                        endTime=now + dt.timedelta(minutes=1))["metricDatumList"]
        if values:
            return [v["value"] for v in values]
        if time.time() >= deadline:
            return []
        time.sleep(0.3)


def active(iot) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return {(v["thingName"], v["behavior"]["name"]) for v in iot.list_active_violations(maxResults=250)["activeViolations"]}


@pytest.fixture
def cloud(tmp_path):
    passwords = tmp_path / "passwords"
    passwords.write_text("".join(f"{n}:pw-{n}\n" for n in ("flooder", "bouncer", "quiet", "intruder")))
    svc = ServiceProcess(data_dir=tmp_path / "data", extra_args=[
        "--metrics-window", str(WINDOW), "--mqtt-auth", "password", "--mqtt-password-file", str(passwords)])
    svc.start()
    iot = svc.client()
    setup_profile(iot)
    yield svc, iot
    svc.stop()


def test_misbehaving_clients_produce_datapoints_and_violations(cloud):
    svc, iot = cloud
    port = svc.mqtt_port
    time.sleep(WINDOW - time.time() % WINDOW + 0.1)  # start at the beginning of a window
    # 1. fails authentication (as the registered thing "intruder", and as a name no device has);
    # 2. publishes to a forbidden topic; 3. floods; 4. reconnects in a loop
    iot.create_thing(thingName="intruder")
    for name in ("intruder", "phantom-of-nobody"):
        bad = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        bad.username_pw_set(name, "wrong")
        try:
            bad.connect("127.0.0.1", port)
            bad.loop(timeout=1)
        finally:
            bad.disconnect()
    forbidden = client(port, "quiet", username="quiet", password="pw-quiet")
    forbidden.publish("$aws/things/someone-else/shadow/update", b"{}", qos=1)
    flooder = client(port, "flooder", username="flooder", password="pw-flooder")
    for i in range(80):
        flooder.publish("telemetry/temp" if i < 10 else "other/data", b"x" * 200, qos=0)
    for _ in range(6):
        bouncer = client(port, "bouncer", username="bouncer", password="pw-bouncer")
        bouncer.disconnect()
        stop_network_loop(bouncer)

    assert wait_for_window(iot, "flooder", "aws:num-messages-sent")[0] == {"count": 80}
    assert wait_for_window(iot, "intruder", "aws:num-authorization-failures")[0] == {"count": 1}
    # A refused CONNECT is not a connection: the registered device's addresses are its own ones
    # (none: it was never connected, so no datapoint in that closed window); and a name that is no
    # device's gets no datapoints at all (anyone could create devices by the thousand, without
    # credentials).
    assert wait_for_window(iot, "intruder", "aws:source-ip-address", timeout=0) == []
    assert wait_for_window(iot, "phantom-of-nobody", "aws:num-connection-attempts", timeout=0) == []  # same window
    assert wait_for_window(iot, "quiet", "aws:num-authorization-failures")[0] == {"count": 1}
    assert wait_for_window(iot, "bouncer", "aws:num-connection-attempts")[0] == {"count": 6}
    assert wait_for_window(iot, "flooder", "aws:source-ip-address")[0] == {"cidrs": ["127.0.0.1"]}
    now = dt.datetime.now(dt.timezone.utc)
    dimensioned = iot.list_metric_values(thingName="flooder", metricName="aws:num-messages-sent",
                                         dimensionName="telemetry", startTime=now - dt.timedelta(minutes=5),
                                         endTime=now + dt.timedelta(minutes=1))["metricDatumList"]
    assert dimensioned[0]["value"] == {"count": 10}
    idle = wait_for_window(iot, "idle-sensor", "aws:num-messages-sent")
    assert idle and idle[0] == {"count": 0}  # a monitored device that did nothing gets 0

    violations = active(iot)
    assert {("intruder", "auth"), ("quiet", "auth"), ("flooder", "flood"), ("flooder", "telemetry"),
            ("bouncer", "reconnects"), ("flooder", "network")} <= violations
    assert ("idle-sensor", "flood") not in violations
    assert not any(thing == "phantom-of-nobody" for thing, _ in violations)
    # The flood stops: the next window clears it.
    deadline = time.time() + 15
    while time.time() < deadline and ("flooder", "flood") in active(iot):
        time.sleep(0.3)
    assert ("flooder", "flood") not in active(iot)
    events = iot.list_violation_events(thingName="flooder", startTime=now - dt.timedelta(minutes=5),
                                       endTime=now + dt.timedelta(minutes=5))["violationEvents"]
    flood = [e["violationEventType"] for e in events if e["behavior"]["name"] == "flood"]
    assert flood[:2] == ["in-alarm", "alarm-cleared"]
    # Still connected from an address outside the allowed set, windows later: still in alarm
    # (before, the next window's empty address list cleared it).
    assert [e["violationEventType"] for e in events if e["behavior"]["name"] == "network"] == ["in-alarm"]
    assert ("flooder", "network") in active(iot)
    # Each window's transaction is timed as a window's, in the process that serves /metrics (the
    # detection worker, a child process, sends its timings back).
    metrics = plain_http.get(svc.endpoint + "/metrics", timeout=5).text
    window_things = [float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("iotdefender_cloud_window_transaction_things_sum ")]
    assert window_things and window_things[0] >= 5  # the five devices of the profile, each window
    stop_network_loop(flooder)
    stop_network_loop(forbidden)


def test_broker_event_intake_gives_the_same_violations(tmp_path):
    svc = ServiceProcess(data_dir=tmp_path, extra_args=["--metrics-window", str(WINDOW)])
    svc.start()
    try:
        iot = svc.client()
        setup_profile(iot)
        iot.create_thing(thingName="intruder")  # someone trying to log in as a registered device
        events = ([{"type": "connect", "clientId": "intruder", "ip": "203.0.113.9", "success": False}]
                  + [{"type": "connect", "clientId": "flooder", "ip": "10.1.2.3", "success": True}]
                  + [{"type": "publish", "clientId": "flooder", "topic": "telemetry/t" if i < 10 else "x",
                      "bytes": 200} for i in range(80)]
                  + [{"type": "authorization-failure", "clientId": "quiet", "topic": "$aws/things/x/shadow"}]
                  + [{"type": "connect", "clientId": "bouncer", "ip": "10.0.0.7", "success": True}] * 6
                  + [{"type": "disconnect", "clientId": "bouncer"}] * 6
                  + [{"type": "nonsense", "clientId": "x"}])
        request = AWSRequest(method="POST", url=svc.endpoint + "/_iotdefender/broker-events",
                             data=__import__("json").dumps({"events": events}).encode(),
                             headers={"Content-Type": "application/json"})
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "iot", REGION).add_auth(request)
        # Every event counts in the window it arrives in: posted just after a window began, and
        # signed before, so that little stands between the two. A full run once read 0 for the
        # flooder's first window (not reproduced alone; its load delaying the post past the
        # window's end is the likeliest cause, not established).
        time.sleep(WINDOW - time.time() % WINDOW + 0.05)
        answer = plain_http.post(request.url, content=request.body, headers=dict(request.headers.items()))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"accepted": len(events) - 1, "refused": [
            {"index": len(events) - 1, "reason": "type must be one of connect, authorization-failure, disconnect, "
                                                 "publish, deliver"}]}
        assert wait_for_window(iot, "flooder", "aws:num-messages-sent")[0] == {"count": 80}
        deadline = time.time() + 10
        expected = {("intruder", "auth"), ("quiet", "auth"), ("flooder", "flood"), ("flooder", "telemetry"),
                    ("bouncer", "reconnects")}
        while time.time() < deadline and not expected <= active(iot):
            time.sleep(0.3)
        assert expected <= active(iot)
        assert ("flooder", "network") not in active(iot)  # 10.1.2.3 is in 10.0.0.0/8
        assert ("intruder", "network") not in active(iot)  # its CONNECT was refused: it did not connect from there
        unsigned = plain_http.post(svc.endpoint + "/_iotdefender/broker-events", json={"events": []})
        assert unsigned.status_code == 403
    finally:
        svc.stop()


AWAY = {"name": "away", "metric": "aws:disconnect-duration",
        "criteria": {"comparisonOperator": "less-than", "value": {"count": 3}}}


def away_profile(iot, *others: dict) -> None:  # type: ignore[no-untyped-def]
    iot.create_security_profile(securityProfileName="away", behaviors=[AWAY, *others])
    iot.attach_security_profile(securityProfileName="away", securityProfileTargetArn=ALL)


def wait_for_away_alarm(iot, thing: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline and (thing, "away") not in active(iot):
        time.sleep(0.3)
    assert (thing, "away") in active(iot), wait_for_window(iot, thing, "aws:disconnect-duration")


@pytest.fixture
def scaled(tmp_path):  # type: ignore[no-untyped-def]
    """A service at --time-scale 120: a minute lasts 0.5 s, a 5-minute window 2.5 s."""
    svc = ServiceProcess(data_dir=tmp_path, extra_args=["--time-scale", "120"])
    svc.start()
    yield svc
    svc.stop()


def test_disconnect_duration_counts_minutes_divided_by_the_time_scale(scaled):
    """At --time-scale 120 a minute lasts 0.5 s, as the 5-minute window lasts 2.5 s: a device away
    for a few seconds is away several "minutes" and in alarm over a limit of 3. It counted real
    minutes (0 for the first 60 s at any scale: an outside-in test never saw the alarm)."""
    svc = scaled
    iot = svc.client()
    away_profile(iot)
    device = client(svc.mqtt_port, "wanderer")
    stop_network_loop(device)
    device.disconnect()
    left = time.time()
    wait_for_away_alarm(iot, "wanderer")
    counts = [v["count"] for v in wait_for_window(iot, "wanderer", "aws:disconnect-duration")]
    # The newest window's count: whole half-seconds since the device left, at its window's end.
    assert 3 <= max(counts) <= (time.time() - left) / 0.5 + 1, counts


def test_a_device_connected_when_mosquitto_dies_counts_as_disconnected(scaled):
    """Mosquitto killed alone (SIGKILL) tells of no disconnection; the service restarts it and
    counts every connection it had as ended then. Before, a device that did not come back counted
    as connected from then on: no disconnect duration, and its address kept as if connected."""
    svc = scaled
    iot = svc.client()
    away_profile(iot, {"name": "network", "metric": "aws:source-ip-address",
                       "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["127.0.0.0/8"]}}})
    device = client(svc.mqtt_port, "stranded")
    stop_network_loop(device)  # it will not reconnect
    assert wait_for_window(iot, "stranded", "aws:source-ip-address")[0] == {"cidrs": ["127.0.0.1"]}
    assert svc.process is not None
    (broker,) = mosquitto_children(svc.process.pid)
    os.kill(broker, signal.SIGKILL)
    killed = time.time()
    wait_for_away_alarm(iot, "stranded", timeout=25)
    now = dt.datetime.now(dt.timezone.utc)
    addresses = iot.list_metric_values(thingName="stranded", metricName="aws:source-ip-address",
                                       startTime=now - dt.timedelta(minutes=5), endTime=now)["metricDatumList"]
    assert max(a["timestamp"].timestamp() for a in addresses) < killed + 2 * 2.5  # none once the windows after it closed


def test_a_device_connected_at_a_graceful_stop_that_does_not_come_back_counts_as_disconnected(scaled):
    """Stopped with SIGTERM, the service stops Mosquitto after its own connection, so no device's
    disconnection reaches it: each connection counts as ended when the stop began. Before, a device
    that did not come back after the restart counted as connected from then on (the window kept at
    the stop said so): no disconnect duration, ever. One that comes back is connected again."""
    svc = scaled
    iot = svc.client()
    away_profile(iot)
    stranded = client(svc.mqtt_port, "stranded")
    stop_network_loop(stranded)  # it will not reconnect
    back = client(svc.mqtt_port, "back")  # paho's loop connects it again after the restart
    wait_for_window(iot, "stranded", "aws:disconnect-duration")
    svc.restart()
    wait_for_away_alarm(iot, "stranded", timeout=25)
    wait_for(back.is_connected, 20, "back connected again")
    returned = time.time()

    def latest_away_minutes(thing: str) -> int | None:
        now = dt.datetime.now(dt.timezone.utc)
        values = iot.list_metric_values(thingName=thing, metricName="aws:disconnect-duration",
                                        startTime=now - dt.timedelta(minutes=5), endTime=now)["metricDatumList"]
        value = max(values, key=lambda v: v["timestamp"]) if values else None
        return value["value"]["count"] if value and value["timestamp"].timestamp() > returned + 2.5 else None

    wait_for(lambda: latest_away_minutes("back") is not None, 20, "a window after back returned")
    assert latest_away_minutes("back") == 0
    assert (latest_away_minutes("stranded") or 0) >= 3
    wait_for(lambda: ("back", "away") not in active(iot), 10, "back's away alarm cleared")
    assert ("stranded", "away") in active(iot)
    stop_network_loop(back)
