"""Cluster mode end to end: one nats-server (JetStream), PostgreSQL and two ``iotdefender serve``
processes with every role, driven only by boto3 and paho-mqtt.

Devices connected to node A are answered ``/accepted`` only once their report is committed (node
B's API lists the violation the moment the device has its answer); a profile changed through node
A changes the verdict of devices on node B within a second, whichever node owns their partition;
a device cannot publish for another thing on either node.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest

from iotdefender.cluster.partitions import assignment, partition_of
from tests.support.mqtt import Device, report
from tests.support.processes import ServiceProcess, wait_for

pytestmark = pytest.mark.postgres

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"
PORTS = {"name": "ports", "metric": "aws:listening-tcp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]}}}
ALLOW_22 = {**PORTS, "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443, 22]}}}


def node_id(svc: ServiceProcess) -> str:
    """The node id from the node's `ready` log line (JSON lines: its log is a file)."""
    assert svc.log_path is not None
    for line in svc.log_path.read_text().splitlines():
        if '"ready"' in line:
            return json.loads(line)["node"]
    raise AssertionError("no ready line")


def ready(svc: ServiceProcess) -> bool:
    import httpx

    return httpx.get(svc.endpoint + "/healthz", timeout=2).status_code == 200


def gauge(svc: ServiceProcess, name: str) -> float:
    import httpx

    values = [float(line.split()[-1]) for line in httpx.get(svc.endpoint + "/metrics", timeout=2).text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    return sum(values)


def owned_by(owner: str, members: list[str], count: int, prefix: str) -> list[str]:
    share = assignment(members)[owner]
    names = (f"{prefix}-{i}" for i in range(10_000))
    return [name for name in names if partition_of(name) in share][:count]


def window() -> dict[str, dt.datetime]:
    now = dt.datetime.now(dt.timezone.utc)
    return {"startTime": now - dt.timedelta(hours=1), "endTime": now + dt.timedelta(hours=1)}


def test_two_serve_nodes_share_detection_and_the_control_plane(jetstream, postgres, tmp_path: Path):
    started = time.monotonic()
    url = postgres.create_database(f"cluster{time.time_ns()}")
    args = ["--cluster-url", jetstream.urls[0], "--report-min-interval", "0"]
    a = ServiceProcess(data_dir=tmp_path / "a", database_url=url, extra_args=args)
    b = ServiceProcess(data_dir=tmp_path / "b", database_url=url, extra_args=args)
    devices: list[Device] = []
    try:
        a.start()  # alone: ready once it owns all 64 partitions
        b.start()  # ready once it owns its share, which a hands over
        wait_for(lambda: ready(a) and ready(b), 20, "both nodes ready")
        members = sorted([node_id(a), node_id(b)])
        # Each node's /metrics: its partitions (the two shares make the 64), lag per owned partition.
        wait_for(lambda: gauge(a, "iotdefender_cluster_owned_partitions") == len(assignment(members)[node_id(a)])
                 and gauge(b, "iotdefender_cluster_owned_partitions") == len(assignment(members)[node_id(b)]),
                 10, "the gauges of both shares")
        assert gauge(a, "iotdefender_cluster_owned_partitions") + gauge(b, "iotdefender_cluster_owned_partitions") == 64
        assert gauge(a, "iotdefender_cluster_consumer_lag") == 0
        iot_a, iot_b = a.client(), b.client()
        iot_b.create_security_profile(securityProfileName="fleet", behaviors=[PORTS])
        iot_b.attach_security_profile(securityProfileName="fleet", securityProfileTargetArn=ALL_THINGS)

        # Devices on node A whose partitions either node owns: accepted only after commit, so node B's
        # API shows each violation as soon as the device has heard `accepted`.
        on_a = owned_by(node_id(a), members, 3, "cam-a") + owned_by(node_id(b), members, 3, "cam-b")
        for thing in on_a:
            devices.append(Device(a.mqtt_port, thing))
        for device in devices:
            assert device.report(report(1, [443, 22]))[0] == "json/accepted"
            active = iot_b.list_active_violations(thingName=device.thing)["activeViolations"]
            assert [(v["thingName"], v["behavior"]["name"]) for v in active] == [(device.thing, "ports")]
        events = iot_b.list_violation_events(**window())["violationEvents"]
        assert sorted((e["thingName"], e["violationEventType"]) for e in events) == sorted(
            (thing, "in-alarm") for thing in on_a)

        # Devices on node B, some owned by each node; a profile update through node A reaches both.
        on_b = owned_by(node_id(b), members, 2, "meter-b") + owned_by(node_id(a), members, 2, "meter-a")
        b_devices = [Device(b.mqtt_port, thing) for thing in on_b]
        devices += b_devices
        for device in b_devices:
            assert device.report(report(1, [443, 22]))[0] == "json/accepted"
        assert len(iot_a.list_active_violations()["activeViolations"]) == len(on_a) + len(on_b)
        iot_a.update_security_profile(securityProfileName="fleet", behaviors=[ALLOW_22])
        time.sleep(1.0)
        for device in b_devices:
            assert device.report(report(2, [443, 22]))[0] == "json/accepted"
            assert iot_a.list_active_violations(thingName=device.thing)["activeViolations"] == []
        cleared = iot_b.list_violation_events(**window(), thingName=on_b[-1])["violationEvents"]
        assert [e["violationEventType"] for e in cleared] == ["in-alarm", "alarm-cleared"]

        # The ACL holds on both nodes: a device reporting for another thing is refused and stores nothing.
        for svc, thing, victim in ((a, "liar-a", on_a[0]), (b, "liar-b", on_b[0])):
            liar = Device(svc.mqtt_port, thing)
            devices.append(liar)
            liar.publish(json.dumps(report(99, [23])).encode(), thing=victim)
            wait_for(lambda: liar.disconnected, 5, "the liar disconnected")
        time.sleep(0.5)
        for victim in (on_a[0], on_b[0]):
            data = iot_b.list_metric_values(thingName=victim, metricName="aws:listening-tcp-ports",
                                            **window())["metricDatumList"]
            assert data and all(23 not in d["value"]["ports"] for d in data)
        print(f"cluster e2e: {time.monotonic() - started:.1f}s")
    finally:
        for device in devices:
            device.close()
        b.stop()
        a.stop()
