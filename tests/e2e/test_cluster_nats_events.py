"""An external NATS broker's events in cluster mode: two nodes given ``--nats-events-url``, one
reading at a time (a PostgreSQL advisory lock), so each device's messages count once; when the
reading node is killed, the other takes over.

The devices connect to a real NATS server's MQTT listener (Debian's nats-server, with a system
account); the cluster has its own nats-server (JetStream) and PostgreSQL. Driven by boto3 and
paho-mqtt only.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from tests.support.mqtt import Device, report
from tests.support.processes import NatsServer, ServiceProcess, wait_for

pytestmark = pytest.mark.postgres

WINDOW_S = 2.0
ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"


def reading(svc: ServiceProcess) -> bool:
    """Whether this node took the events' lock (its log says so)."""
    assert svc.log_path is not None
    return '"singleton_started"' in svc.log_path.read_text()


def sent_total(iot, thing: str) -> int:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.timezone.utc)
    pages = iot.get_paginator("list_metric_values").paginate(
        thingName=thing, metricName="aws:num-messages-sent", startTime=now - dt.timedelta(minutes=10), endTime=now)
    return sum(int(d["value"]["count"]) for page in pages for d in page["metricDatumList"])


def test_two_nodes_count_an_external_brokers_messages_once_and_the_standby_takes_over(jetstream, postgres,
                                                                                      tmp_path: Path):
    external = NatsServer()
    external.start()
    url = postgres.create_database(f"clnats{time.time_ns()}")
    events = ["--nats-events-url", f"nats://sys:sys@127.0.0.1:{external.port}",
              "--nats-monitor-url", f"http://127.0.0.1:{external.http_port}"]
    common = ["--cluster-url", jetstream.urls[0], "--metrics-window", str(WINDOW_S), "--report-min-interval", "0",
              *events]
    a = ServiceProcess(data_dir=tmp_path / "a", database_url=url, extra_args=[
        *common, "--mqtt-url", f"mqtt://dev:dev@127.0.0.1:{external.mqtt_port}"])
    b = ServiceProcess(data_dir=tmp_path / "b", database_url=url, extra_args=[*common, "--roles", "api,detect"])
    devices: list[Device] = []
    try:
        a.start()
        wait_for(lambda: reading(a), 15, "node A reading the events")
        b.start()
        iot = b.client()
        iot.create_security_profile(securityProfileName="flood", behaviors=[
            {"name": "flood", "metric": "aws:num-messages-sent",
             "criteria": {"comparisonOperator": "less-than", "value": {"count": 50}}}])
        iot.attach_security_profile(securityProfileName="flood", securityProfileTargetArn=ALL_THINGS)
        time.sleep(1.0)  # the attachment reaches both nodes

        first = Device(external.mqtt_port, "nats-first", username="dev", password="dev")
        devices.append(first)
        assert first.report(report(1, [443]))[0] == "json/accepted"  # through node A's connection to NATS
        for _ in range(80):
            first.client.publish("telemetry/x", b"y" * 50, qos=0)
        wait_for(lambda: sent_total(iot, "nats-first") >= 81, 20, "the 81 messages counted")
        time.sleep(3 * WINDOW_S)  # a second reader would have added its count by now
        counted = sent_total(iot, "nats-first")
        assert 81 <= counted < 2 * 81, counted  # once (the connection's own NATS counters), not once per node
        assert not reading(b)  # standing by

        a.kill9()  # the reader dies; PostgreSQL frees its lock with its connection
        killed = time.monotonic()
        wait_for(lambda: reading(b), 15, "node B reading the events")
        took_over = time.monotonic() - killed
        # The windows after the kill are incomplete (A's parts are gone) and B takes A's partitions
        # over: the new device connects right away, in the first window B closes for one of them,
        # and counts whole all the same (who A saw in the window before is kept in PostgreSQL,
        # docs/cluster.md "Whether a window has every part"; without it this test failed when A
        # died just after closing the window before: 1 full run in 3).
        second = Device(external.mqtt_port, "nats-second", username="dev", password="dev")
        devices.append(second)
        for _ in range(60):
            second.client.publish("telemetry/x", b"z" * 20, qos=0)
        # The first device, connected before B read, counts from B's start (before: never again
        # until it reconnected).
        for _ in range(70):
            first.client.publish("telemetry/x", b"y" * 50, qos=0)
        # Closed ~12 s after its end: A stays an expected publisher for the wait (10 s).
        wait_for(lambda: sent_total(iot, "nats-second") >= 60, 30, "the 60 messages counted by node B")
        wait_for(lambda: sent_total(iot, "nats-first") >= counted + 70, 10, "the first device's 70 counted by node B")
        time.sleep(2 * WINDOW_S)
        assert sent_total(iot, "nats-second") == 60
        assert sent_total(iot, "nats-first") == counted + 70
        raised = {e["thingName"] for e in iot.list_violation_events(
            startTime=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10),
            endTime=dt.datetime.now(dt.timezone.utc))["violationEvents"] if e["violationEventType"] == "in-alarm"}
        assert {"nats-first", "nats-second"} <= raised
        print(f"nats events: {counted} messages counted for 81 sent; node B reading {took_over:.1f}s after the kill")
    finally:
        for device in devices:
            device.close()
        b.stop()
        a.stop()
        external.stop()
