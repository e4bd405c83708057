"""Cloud-side metrics from a real NATS server: its MQTT listener carries the devices and the
service's reports; its system events and /connz give connections, refusals and message counts."""

from __future__ import annotations

import datetime as dt
import time

import paho.mqtt.client as mqtt

from tests.support.mqtt import Device, report
from tests.support.processes import NatsServer, ServiceProcess

WINDOW = 2.0
BOUNCES = 10


def bounce(port: int) -> None:
    """One connection attempt of the "bouncer" device: connect, wait for the CONNACK, disconnect."""
    connected: list[bool] = []
    bouncer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bouncer")
    bouncer.username_pw_set("dev", "dev")
    bouncer.on_connect = lambda *a: connected.append(True)
    bouncer.connect("127.0.0.1", port)
    deadline = time.time() + 2
    while not connected and time.time() < deadline:
        bouncer.loop(0.05)
    bouncer.disconnect()


def test_nats_events_produce_cloud_side_violations(tmp_path):
    server = NatsServer()
    server.start()
    svc = ServiceProcess(data_dir=tmp_path, extra_args=[
        "--mqtt-url", f"mqtt://dev:dev@127.0.0.1:{server.mqtt_port}", "--report-min-interval", "0",
        "--nats-events-url", f"nats://sys:sys@127.0.0.1:{server.port}",
        "--nats-monitor-url", f"http://127.0.0.1:{server.http_port}", "--metrics-window", str(WINDOW)])
    svc.start()
    try:
        iot = svc.client()
        iot.create_security_profile(securityProfileName="nats", behaviors=[
            {"name": "flood", "metric": "aws:num-messages-sent",
             "criteria": {"comparisonOperator": "less-than", "value": {"count": 50}}},
            {"name": "bounces", "metric": "aws:num-connection-attempts",
             "criteria": {"comparisonOperator": "less-than", "value": {"count": 4}}},
            {"name": "auth", "metric": "aws:num-authorization-failures",
             "criteria": {"comparisonOperator": "less-than", "value": {"count": 1}}},
            {"name": "where", "metric": "aws:source-ip-address",  # stored: a behavior uses it
             "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["127.0.0.0/8"]}}}])
        iot.attach_security_profile(securityProfileName="nats",
                                    securityProfileTargetArn="arn:aws:iot:us-east-1:123456789012:all/things")
        # Reports flow through NATS's MQTT listener too.
        dev = Device(server.mqtt_port, "nats-dev", username="dev", password="dev")
        assert dev.report(report(1, [443]))[0] == "json/accepted"
        for _ in range(80):
            dev.client.publish("telemetry/x", b"y" * 50, qos=0)
        # 10 attempts for a threshold of 4: even spread over three windows on a slow machine, one
        # window holds 4 of them (5 spaced by a fixed 0.5 s could fall 3 + 2 across two 2-s windows).
        for _ in range(BOUNCES):
            bounce(server.mqtt_port)
        iot.create_thing(thingName="intruder")  # a refused CONNECT counts for a device only (aggregator.py)
        intruder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="intruder")
        intruder.username_pw_set("dev", "wrong")
        intruder.connect("127.0.0.1", server.mqtt_port)
        intruder.loop(1.0)

        # Cloud-side alarms last as long as their windows: look for the in-alarm events.
        expected = {("nats-dev", "flood"), ("bouncer", "bounces"), ("intruder", "auth")}
        start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
        deadline = time.time() + 30
        raised: set = set()
        while time.time() < deadline and not expected <= raised:
            time.sleep(0.5)
            events = iot.list_violation_events(startTime=start, endTime=dt.datetime.now(dt.timezone.utc),
                                               maxResults=250)["violationEvents"]
            raised = {(e["thingName"], e["behavior"]["name"]) for e in events if e["violationEventType"] == "in-alarm"}
        now = dt.datetime.now(dt.timezone.utc)
        assert expected <= raised, raised
        assert not any(thing.startswith("iotdefender-") for thing, _ in raised)  # our own connection is no device
        sent = iot.list_metric_values(thingName="nats-dev", metricName="aws:num-messages-sent",
                                      startTime=now - dt.timedelta(minutes=5), endTime=now)["metricDatumList"]
        assert sum(d["value"]["count"] for d in sent) >= 81  # the report and the 80 telemetry messages

        # A restart while the device stays connected to NATS: read from /connz at the start, it
        # is connected from its address in every window after, idle as it is (before: never seen
        # until its next event, no address). Its first messages after count from then on.
        svc.stop()
        svc.start()
        restarted = dt.datetime.now(dt.timezone.utc)
        for _ in range(7):
            dev.client.publish("telemetry/x", b"y" * 50, qos=0)

        def since_restart(metric: str) -> list:
            return iot.list_metric_values(thingName="nats-dev", metricName=metric, startTime=restarted,
                                          endTime=dt.datetime.now(dt.timezone.utc))["metricDatumList"]

        deadline = time.time() + 20
        while time.time() < deadline and len(since_restart("aws:source-ip-address")) < 2:
            time.sleep(0.5)
        addresses = [d["value"]["cidrs"] for d in since_restart("aws:source-ip-address")]
        assert len(addresses) >= 2 and all(cidrs == ["127.0.0.1"] for cidrs in addresses), addresses
        assert sum(d["value"]["count"] for d in since_restart("aws:num-messages-sent")) == 7
        dev.close()
    finally:
        svc.stop()
        server.stop()
