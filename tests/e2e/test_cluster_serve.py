"""Cluster mode end to end: one nats-server (JetStream), PostgreSQL and two ``iotdefender serve``
processes with every role, driven only by boto3 and paho-mqtt.

Devices connected to node A are answered ``/accepted`` only once their report is committed (node
B's API lists the violation the moment the device has its answer); a profile changed through node
A changes the verdict of devices on node B within a second, whichever node owns their partition;
a device cannot publish for another thing on either node.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
import pytest
import sqlalchemy as sa

from iotdefender import __version__
from iotdefender.cluster.partitions import PARTITION_COUNT, assignment, partition_of
from iotdefender.store import history
from iotdefender.store.database import create_engine
from tests.support.mqtt import Device, ExportSubscriber, report
from tests.support.processes import ACCESS_KEY, REGION, SECRET_KEY, ServiceProcess, start_together, wait_for
from tests.support.webhook import WebhookReceiver
from tests.support import plain_http

pytestmark = pytest.mark.postgres

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"
TOPIC = "arn:aws:sns:us-east-1:123456789012:dd-alerts"
PORTS = {"name": "ports", "metric": "aws:listening-tcp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]}}}
CLOUD_WINDOW_S = 4.0  # cloud-side metrics' window on both nodes (AWS: 300 s)
CHATTY = {"name": "chatty", "metric": "aws:num-messages-sent",
          "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 5}}}
ALLOW_22 = {**PORTS, "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443, 22]}}}


def node_id(svc: ServiceProcess) -> str:
    """The node id from the node's `ready` log line (JSON lines: its log is a file)."""
    assert svc.log_path is not None
    for line in svc.log_path.read_text().splitlines():
        if '"ready"' in line:
            return json.loads(line)["node"]
    raise AssertionError("no ready line")


def ready(svc: ServiceProcess) -> bool:
    return plain_http.get(svc.endpoint + "/healthz", timeout=2).status_code == 200


def gauge(svc: ServiceProcess, name: str) -> float:
    values = [float(line.split()[-1]) for line in plain_http.get(svc.endpoint + "/metrics", timeout=2).text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    return sum(values)


def owned_by(owner: str, members: list[str], count: int, prefix: str) -> list[str]:
    share = assignment(members)[owner]
    names = (f"{prefix}-{i}" for i in range(10_000))
    return [name for name in names if partition_of(name) in share][:count]


def window() -> dict[str, dt.datetime]:
    now = dt.datetime.now(dt.timezone.utc)
    return {"startTime": now - dt.timedelta(hours=1), "endTime": now + dt.timedelta(hours=1)}


@contextlib.contextmanager
def two_nodes(database_url: str, tmp_path: Path, args: list[str]) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Two serve nodes with every role and ``args`` on one database, both ready (each once it owns
    its share); stopped when the block ends."""
    a = ServiceProcess(data_dir=tmp_path / "a", database_url=database_url, extra_args=args)
    b = ServiceProcess(data_dir=tmp_path / "b", database_url=database_url, extra_args=args)
    try:
        start_together(a, b)
        wait_for(lambda: ready(a) and ready(b), 20, "both nodes ready")
        yield a, b
    finally:
        b.stop()
        a.stop()


@pytest.fixture
def hook():  # type: ignore[no-untyped-def]
    receiver = WebhookReceiver("hook-secret")
    yield receiver
    receiver.close()


@pytest.fixture
def pair(jetstream, postgres, hook, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two serve nodes with every role on one nats-server and one PostgreSQL database, both ready;
    alerts of the SNS topic TOPIC go to ``hook``."""
    url = postgres.create_database(f"cluster{time.time_ns()}")
    subscriptions = tmp_path / "subscriptions.json"
    subscriptions.write_text(json.dumps({TOPIC: [{"webhook": hook.url, "secret": "hook-secret"}]}))
    args = ["--cluster-url", jetstream.urls[0], "--report-min-interval", "0", "--alert-subscriptions",
            str(subscriptions), "--metrics-window", str(CLOUD_WINDOW_S)]
    with two_nodes(url, tmp_path, args) as nodes:
        yield nodes


def test_two_serve_nodes_share_detection_and_the_control_plane(pair):
    started = time.monotonic()
    a, b = pair
    devices: list[Device] = []
    try:
        members = sorted([node_id(a), node_id(b)])
        # Each node's /metrics: its partitions (the two shares make the 64), lag per owned partition.
        wait_for(lambda: gauge(a, "iotdefender_cluster_owned_partitions") == len(assignment(members)[node_id(a)])
                 and gauge(b, "iotdefender_cluster_owned_partitions") == len(assignment(members)[node_id(b)]),
                 10, "the gauges of both shares")
        assert gauge(a, "iotdefender_cluster_owned_partitions") + gauge(b, "iotdefender_cluster_owned_partitions") == 64
        # Nothing waits once the nodes' first windows and notices are read (11 once, read at a load of 9).
        wait_for(lambda: gauge(a, "iotdefender_cluster_consumer_lag") == 0, 10, "node A's consumer caught up")
        iot_a, iot_b = a.client(), b.client()
        # Its ports are exported too (metrics export): each datapoint published once, on one node's
        # broker, so the consumer subscribes on each.
        iot_b.create_security_profile(securityProfileName="fleet", behaviors=[{**PORTS, "exportMetric": True}],
                                      metricsExportConfig={"mqttTopic": "export/fleet",
                                                           "roleArn": "arn:aws:iam::123456789012:role/export"})
        iot_b.attach_security_profile(securityProfileName="fleet", securityProfileTargetArn=ALL_THINGS)
        consumers = [ExportSubscriber(svc.mqtt_port, "export/fleet") for svc in (a, b)]

        # Devices on node A whose partitions either node owns: accepted only after commit, so node B's
        # API shows each violation as soon as the device has heard `accepted`.
        on_a = owned_by(node_id(a), members, 3, "cam-a") + owned_by(node_id(b), members, 3, "cam-b")
        for thing in on_a:
            devices.append(Device(a.mqtt_port, thing))
        answered: list[float] = []
        for device in devices:
            sent = time.monotonic()
            assert device.report(report(1, [443, 22]))[0] == "json/accepted"
            answered.append(time.monotonic() - sent)
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

        def exported() -> Counter[tuple[str, str, Any]]:
            return Counter((m["thing"], m["name"], tuple(m["value"]["ports"])) for c in consumers for m in c.received())

        wait_for(lambda: sum(exported().values()) >= len(on_a) + len(on_b), 10, "the exported ports")
        iot_a.update_security_profile(securityProfileName="fleet", behaviors=[ALLOW_22])  # not exported
        time.sleep(1.0)
        for device in b_devices:
            assert device.report(report(2, [443, 22]))[0] == "json/accepted"
            assert iot_a.list_active_violations(thingName=device.thing)["activeViolations"] == []
        cleared = iot_b.list_violation_events(**window(), thingName=on_b[-1])["violationEvents"]
        assert [e["violationEventType"] for e in cleared] == ["in-alarm", "alarm-cleared"]
        assert exported() == Counter((thing, "aws:listening-tcp-ports", (22, 443)) for thing in on_a + on_b)
        for consumer in consumers:
            consumer.close()

        # A Detect mitigation task started through node B runs on one of the api nodes: every device
        # with a violation of the profile joins the quarantine group, each once.
        iot_a.create_thing_group(thingGroupName="quarantine")
        for thing in on_a + on_b:  # reporting unregistered so far: a thing joins a group once registered
            iot_a.create_thing(thingName=thing)
        iot_a.create_mitigation_action(actionName="quarantine", roleArn="arn:aws:iam::123456789012:role/mitigation",
                                       actionParams={"addThingsToThingGroupParams": {"thingGroupNames": ["quarantine"]}})
        iot_b.start_detect_mitigation_actions_task(taskId="quarantine-fleet", target={"securityProfileName": "fleet"},
                                                   actions=["quarantine"])
        wait_for(lambda: iot_a.describe_detect_mitigation_actions_task(taskId="quarantine-fleet")["taskSummary"][
            "taskStatus"] == "SUCCESSFUL", 10, "the mitigation task")
        statistics = iot_a.describe_detect_mitigation_actions_task(taskId="quarantine-fleet")["taskSummary"]
        assert statistics["taskStatistics"] == {"actionsExecuted": len(on_a) + len(on_b), "actionsSkipped": 0,
                                                "actionsFailed": 0}
        assert sorted(iot_b.list_things_in_thing_group(thingGroupName="quarantine", maxResults=100)["things"]) == \
            sorted(on_a + on_b)

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

        # A third node with the broker role only: it takes devices, detects nothing, serves no API.
        c = ServiceProcess(data_dir=a.data_dir.parent / "c", database_url=a.database_url,
                           extra_args=[*a.extra_args, "--roles", "broker"])
        try:
            c.start()
            device = Device(c.mqtt_port, on_a[1])
            devices.append(device)
            assert device.report(report(2, [443]))[0] == "json/accepted"
            assert iot_b.list_active_violations(thingName=on_a[1])["activeViolations"] == []  # cleared
            metrics = plain_http.get(c.endpoint + "/metrics")
            assert metrics.status_code == 200 and "iotdefender_cluster_nats_connected 1.0" in metrics.text
            assert "iotdefender_cluster_members" not in metrics.text  # the detect role's gauges: not here
            assert "iotdefender_cluster_redeliveries_total" not in metrics.text  # nor its counters
            assert "iotdefender_cluster_set_aside_total" not in metrics.text
            # Both detect nodes' readers set the ends of cloud windows aside (one a window and
            # partition from each broker node), as ``serve`` builds them: kept beside the reports.
            wait_for(lambda: gauge(a, "iotdefender_cluster_set_aside_total") > 0
                     and gauge(b, "iotdefender_cluster_set_aside_total") > 0, 2 * CLOUD_WINDOW_S + 5,
                     "parts and ends set aside on both detect nodes")
            assert 'iotdefender_reports_total{outcome="accepted"} 1.0' in metrics.text  # the broker's are
            # The operators' series of its role: the answer timed while it waited for a detect node's
            # commit, its one MQTT client, what it is; no detect transaction, no HTTP request series.
            assert 'iotdefender_report_answer_seconds_count{outcome="accepted"} 1.0' in metrics.text
            wait_for(lambda: gauge(c, "iotdefender_mqtt_connected_clients") == 1, 5, "node C's one client")
            assert (f'iotdefender_node_info{{node="{node_id(c)}",roles="broker",version="{__version__}"}} 1.0'
                    in metrics.text)
            assert "iotdefender_detect_transaction_seconds" not in metrics.text
            assert "iotdefender_http_requests_total" not in metrics.text
            # The detect nodes timed the transactions of the 15 reports stored so far (a redelivery
            # would count again), and node B counted the API calls it answered, by operation.
            assert gauge(a, "iotdefender_detect_transaction_reports_sum") + \
                gauge(b, "iotdefender_detect_transaction_reports_sum") >= 15
            assert gauge(a, "iotdefender_detect_transaction_seconds_count") > 0
            b_text = plain_http.get(b.endpoint + "/metrics").text
            assert 'iotdefender_http_requests_total{code="200",operation="ListViolationEvents"} 2.0' in b_text
            assert plain_http.get(c.endpoint + "/2017-05-01/security-profiles").status_code == 404  # no API here
            assert gauge(a, "iotdefender_cluster_members") == 2  # not a detect member
        finally:
            c.stop()

        # A node started with another value of a flag every node computes with is refused, naming it.
        other = [*a.extra_args[:a.extra_args.index("--metrics-window")], "--metrics-window", "7"]
        odd = ServiceProcess(data_dir=a.data_dir.parent / "odd", database_url=a.database_url, extra_args=other)
        refused = subprocess.run(
            [sys.executable, "-m", "iotdefender", "serve", "--host", odd.host, "--api-port", str(odd.port),
             "--mqtt-port", str(odd.mqtt_port), "--data-dir", str(odd.data_dir), "--database-url",
             str(a.database_url), *other], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert f"--metrics-window is 7.0 on this node but {float(CLOUD_WINDOW_S)!r} on node" in refused.stderr
        cloud_started = time.monotonic()
        roamer_sent = roam_between_nodes(a, b, iot_a, owned_by(node_id(b), members, 1, "roamer")[0], devices)
        print(f"cluster e2e: cloud-side metrics {time.monotonic() - cloud_started:.1f}s, the roamer's 7 "
              f"messages sent in {roamer_sent:.2f}s")
        print(f"cluster e2e: {time.monotonic() - started:.1f}s; report -> accepted through node A: "
              f"{', '.join(f'{1000 * t:.0f}' for t in answered)} ms")

        # The console behind a load balancer without sticky sessions: a login on A is a session on
        # B (it was unknown there: sessions lived in A's memory), and a logout on B ends it on A.
        console_a = httpx.Client(base_url=a.endpoint, follow_redirects=False, timeout=30)
        assert console_a.post("/console/login", data={"access_key_id": ACCESS_KEY,
                                                      "secret_access_key": SECRET_KEY}).status_code == 303
        console_b = httpx.Client(base_url=b.endpoint, follow_redirects=False, timeout=30, cookies=console_a.cookies)
        page_b = console_b.get("/console/")
        assert page_b.status_code == 200, page_b.headers.get("location")
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page_b.text)
        assert csrf is not None
        assert console_b.post("/console/logout", data={"csrf": csrf.group(1)}).status_code == 303
        assert console_a.get("/console/").status_code == 303  # to the login page

        # `docker stop`, Kubernetes and systemd stop a node with SIGTERM: it leaves cleanly, handing
        # its partitions over at once (it used to exit at once, its partitions waiting for the lease
        # to expire): B's log shows every partition of its share released, and A then owns them all.
        b_share = assignment(members)[node_id(b)]
        stopping = time.monotonic()
        b.stop()
        wait_for(lambda: gauge(a, "iotdefender_cluster_owned_partitions") == PARTITION_COUNT, 10, "A owns all")
        assert b.log_path is not None
        b_log = b.log_path.read_text()
        # Counted from the stop: started with A, B may have held (and released) more than its share.
        at_stop = b_log[b_log.index('"event": "stopping"'):]
        assert at_stop.count('"cluster.partition_released"') == len(b_share) and '"stopped"' in at_stop, b_log[-3000:]
        print(f"cluster e2e: SIGTERM of B -> A owns all {PARTITION_COUNT} partitions in "
              f"{time.monotonic() - stopping:.1f}s")
    finally:
        for device in devices:
            device.close()


def test_a_detach_through_one_node_invalidates_both_nodes_alarms_at_once_and_once(pair):
    """Each detect node sweeps its own partitions once a minute (the default time scale): a
    detach left the violations active until then. The control notice wakes every detect node's
    sweep; each invalidates the alarms of the partitions it owns (their fences), so every
    violation gets one alarm-invalidated, not one per node."""
    a, b = pair
    members = sorted([node_id(a), node_id(b)])
    iot_a, iot_b = a.client(), b.client()
    iot_a.create_security_profile(securityProfileName="leaving", behaviors=[PORTS])
    iot_a.attach_security_profile(securityProfileName="leaving", securityProfileTargetArn=ALL_THINGS)
    time.sleep(1.0)  # the attachment reaches every node (control notices)
    things = owned_by(node_id(a), members, 2, "det-a") + owned_by(node_id(b), members, 2, "det-b")
    for thing in things:
        device = Device(b.mqtt_port, thing)
        try:
            assert device.report(report(1, [443, 22]))[0] == "json/accepted"
        finally:
            device.close()
    assert len(iot_a.list_active_violations(securityProfileName="leaving")["activeViolations"]) == len(things)
    iot_b.detach_security_profile(securityProfileName="leaving", securityProfileTargetArn=ALL_THINGS)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and iot_a.list_active_violations(
            securityProfileName="leaving")["activeViolations"]:
        time.sleep(0.1)
    assert iot_a.list_active_violations(securityProfileName="leaving")["activeViolations"] == []
    time.sleep(1.0)  # a second node's duplicate would come now
    events = iot_a.list_violation_events(**window(), securityProfileName="leaving")["violationEvents"]
    assert Counter((e["thingName"], e["violationEventType"]) for e in events) == Counter(
        {(thing, kind): 1 for thing in things for kind in ("in-alarm", "alarm-invalidated")})


def roam(a: ServiceProcess, b: ServiceProcess, iot: Any, roamer: str, devices: list[Device]) -> tuple[float, float]:
    """A device sends 4 messages through node A, moves to node B and sends 3 more, all in one
    cloud-side window. Returns how long the 7 messages took (they must fit in the window) and the
    window's end (epoch seconds)."""
    iot.create_security_profile(securityProfileName="cloudy", behaviors=[CHATTY])
    iot.attach_security_profile(securityProfileName="cloudy", securityProfileTargetArn=ALL_THINGS)
    time.sleep(1.0)  # the attachment reaches every node (control notices)
    now = time.time()
    time.sleep(CLOUD_WINDOW_S - now % CLOUD_WINDOW_S + 0.05)  # at the start of a window
    end = (time.time() // CLOUD_WINDOW_S + 1) * CLOUD_WINDOW_S
    began = time.monotonic()
    first = Device(a.mqtt_port, roamer)
    devices.append(first)
    for report_id in (1, 2, 3, 4):
        assert first.report(report(report_id, [443]))[0] == "json/accepted"
    first.close()
    second = Device(b.mqtt_port, roamer)
    devices.append(second)
    for report_id in (5, 6, 7):
        assert second.report(report(report_id, [443]))[0] == "json/accepted"
    took = time.monotonic() - began
    assert took < CLOUD_WINDOW_S - 0.3, f"the 7 messages took {took:.2f}s: not in one window"
    return took, end


def assert_one_window_of_seven(iot: Any, roamer: str, within_s: float) -> None:
    """The device's detect node merged both nodes' parts into one datapoint of 7 messages (more
    than 5: in alarm; neither node saw more than 5), none counted twice."""
    def sent() -> list[int]:
        return [int(d["value"]["count"]) for d in iot.list_metric_values(
            thingName=roamer, metricName="aws:num-messages-sent", **window())["metricDatumList"]]
    wait_for(lambda: 7 in sent(), within_s, "the roamer's window merged from both nodes")
    assert sum(sent()) == 7, sent()  # nothing counted twice
    events = iot.list_violation_events(**window(), thingName=roamer)["violationEvents"]
    assert [(e["behavior"]["name"], e["violationEventType"]) for e in events][:1] == [("chatty", "in-alarm")]


def roam_between_nodes(a: ServiceProcess, b: ServiceProcess, iot: Any, roamer: str, devices: list[Device]) -> float:
    """Cloud-side metrics across broker nodes: ``roam``, then one datapoint of 7."""
    took, _ = roam(a, b, iot, roamer, devices)
    assert_one_window_of_seven(iot, roamer, 3 * CLOUD_WINDOW_S)
    return took


def test_kill9_of_the_detect_node_holding_a_window_s_parts_loses_none_of_them(pair):
    """The roamer's detect node (B) has received both broker nodes' parts of the window (and acked
    them) when it is killed, before the window's grace ends: the survivor takes the partition over
    and closes the window from the parts B kept in PostgreSQL: one datapoint of 7, as without the kill."""
    a, b = pair
    members = sorted([node_id(a), node_id(b)])
    iot = a.client()
    roamer = owned_by(node_id(b), members, 1, "crash-roamer")[0]
    devices: list[Device] = []
    try:
        _, end = roam(a, b, iot, roamer, devices)
        time.sleep(max(0.0, end + 1.0 - time.time()))  # parts published (end + 0.2 s), not closed (end + 2 s)
        b.kill9()
        killed = time.monotonic()
        assert_one_window_of_seven(iot, roamer, 30)
        print(f"kill -9 of the detect node: the roamer's window of 7 stored {time.monotonic() - killed:.1f}s after")
    finally:
        for device in devices:
            device.close()


def post_broker_events(svc: ServiceProcess, events: list[dict[str, Any]]) -> dict[str, Any]:
    request = AWSRequest(method="POST", url=svc.endpoint + "/_iotdefender/broker-events",
                         data=json.dumps({"events": events}).encode(), headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "iot", REGION).add_auth(request)
    answer = plain_http.post(request.url, content=request.body, headers=dict(request.headers.items()))
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_broker_events_posted_to_two_nodes_are_one_window_of_the_device(pair):
    """An external broker's events through the HTTP intake of any node: a device's 4 messages
    posted to node A and 3 to node B in one window are one datapoint of 7 (in alarm over 5)."""
    a, b = pair
    iot = a.client()
    iot.create_security_profile(securityProfileName="cloudy", behaviors=[CHATTY])
    iot.attach_security_profile(securityProfileName="cloudy", securityProfileTargetArn=ALL_THINGS)
    time.sleep(1.0)  # the attachment reaches every node (control notices)
    thing = "external-device"
    time.sleep(CLOUD_WINDOW_S - time.time() % CLOUD_WINDOW_S + 0.05)  # at the start of a window
    began = time.monotonic()
    connect = {"type": "connect", "clientId": thing, "ip": "198.51.100.7", "success": True}
    publish = {"type": "publish", "clientId": thing, "topic": "telemetry", "bytes": 30}
    assert post_broker_events(a, [connect] + [publish] * 4) == {"accepted": 5, "refused": []}
    assert post_broker_events(b, [publish] * 3) == {"accepted": 3, "refused": []}
    assert time.monotonic() - began < CLOUD_WINDOW_S - 0.3, "not in one window"
    assert_one_window_of_seven(iot, thing, 3 * CLOUD_WINDOW_S)
    # The window's transaction is timed on the detect node that closed it, as a window's, not a report's.
    assert sum(gauge(node, "iotdefender_cloud_window_transaction_things_sum") for node in pair) >= 1
    assert sum(gauge(node, "iotdefender_cloud_window_transaction_seconds_count") for node in pair) >= 1


class Reporter:
    """A device that reports in a loop, resends an unanswered or retryable report with the same id,
    and reconnects to the survivor when its node goes away (what a load balancer gives a device)."""

    def __init__(self, thing: str, port: int, fallback_port: int) -> None:
        self.thing, self.fallback_port = thing, fallback_port
        self.device = Device(port, thing)
        self.accepted: list[int] = []
        self.attempted = 0
        self.reconnected = False

    def run(self, stop: threading.Event) -> None:
        report_id = 1
        while not stop.is_set():
            if self.device.disconnected:
                self.device.close()
                self.device = Device(self.fallback_port, self.thing)
                self.reconnected = True
            self.attempted = report_id
            # Odd ids violate (port 22), even ones comply: every stored report is a transition.
            document = report(report_id, [443, 22] if report_id % 2 else [443],
                              custom_metrics={"seq": [{"number": report_id}]})
            try:
                self.device.publish(json.dumps(document).encode())
                kind, body = self._answer(report_id)
            except (queue.Empty, RuntimeError, ValueError):  # no answer, or the connection went away
                continue
            if kind == "json/accepted" or body["statusDetails"]["ErrorCode"] == "DuplicateReportId":
                self.accepted.append(report_id)
                report_id += 1
            else:
                time.sleep(0.2)  # ServiceUnavailable: retry the same report

    def _answer(self, report_id: int) -> tuple[str, dict[str, Any]]:
        """The reply to ``report_id``; queue.Empty after 15 s or as soon as the connection drops."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not self.device.disconnected:
            try:
                kind, body = self.device.reply(timeout=0.1)
            except queue.Empty:
                continue
            if body.get("reportId") == report_id:
                return kind, body
        raise queue.Empty

    def close(self) -> None:
        self.device.close()


def numeric_points(database_url: str) -> tuple[Counter[tuple[str, str, float, float]],
                                               Counter[tuple[str, str, float, float]]]:
    """(every numeric datapoint of the rows compacted so far, every datapoint in the segments)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            cursor = history.last_compacted_id(conn)
            rows: Counter[tuple[str, str, float, float]] = Counter()
            for thing, ts, points in conn.execute(sa.text(
                    "SELECT thing_name, ts, datapoints FROM metric_values WHERE id <= :c"), {"c": cursor}):
                for series, value in points.items():
                    number = value.get("count", value.get("number"))
                    if isinstance(number, (int, float)) and not isinstance(number, bool):
                        rows[(series, thing, float(ts), float(number))] += 1
            segments: Counter[tuple[str, str, float, float]] = Counter()
            for series, things, index, times, values in conn.execute(sa.text(
                    "SELECT series, things, thing_index, times, vals FROM metric_segments")):
                names = json.loads(things)
                for i, t, v in zip(np.frombuffer(index, "<i4"), np.frombuffer(times, "<f8"),
                                   np.frombuffer(values, "<f8")):
                    segments[(series, names[int(i)], float(t), float(v))] += 1
        return rows, segments
    finally:
        engine.dispose()


def assert_compacted_once(database_url: str) -> None:
    """History compaction ran in the cluster (both nodes run a compactor, one at a time): the
    segments hold exactly the numeric datapoints of the rows up to the cursor, none twice, and the
    cursor has passed the rows stored before now."""
    engine = create_engine(database_url)
    with engine.connect() as conn:
        stored = history.max_row_id(conn)
    engine.dispose()

    def caught_up() -> bool:
        probe = create_engine(database_url)
        with probe.connect() as conn:
            cursor = history.last_compacted_id(conn)
        probe.dispose()
        return cursor >= stored
    wait_for(caught_up, 20, "history compaction past the rows stored before now")
    rows, segments = numeric_points(database_url)
    assert sum(rows.values()) > 0 and segments == rows


def outbox_undelivered(database_url: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(violation id, event type) of the outbox rows still pending, and of those claimed (sending)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT status, message FROM alert_outbox "
                                        "WHERE status IN ('pending', 'sending')")).all()
    finally:
        engine.dispose()
    found: dict[str, set[tuple[str, str]]] = {"pending": set(), "sending": set()}
    for status, text in rows:
        message = json.loads(text)
        found[status].add((message["violationId"], message["violationEventType"]))
    return found["pending"], found["sending"]


def test_kill9_of_a_node_under_load_loses_and_repeats_nothing(pair, hook):
    a, b = pair
    members = sorted([node_id(a), node_id(b)])
    iot = a.client()
    iot.create_custom_metric(metricName="seq", metricType="number")
    iot.create_security_profile(securityProfileName="fleet", behaviors=[PORTS],
                                additionalMetricsToRetainV2=[{"metric": "seq"}], alertTargets={
                                    "SNS": {"alertTargetArn": TOPIC, "roleArn": "arn:aws:iam::123456789012:role/dd"}})
    iot.attach_security_profile(securityProfileName="fleet", securityProfileTargetArn=ALL_THINGS)
    # Every device on the victim b; half of them in b's partitions, half in a's.
    things = owned_by(node_id(b), members, 4, "victim") + owned_by(node_id(a), members, 4, "kept")
    reporters = [Reporter(thing, b.mqtt_port, a.mqtt_port) for thing in things]
    stop = threading.Event()
    threads = [threading.Thread(target=r.run, args=(stop,), daemon=True) for r in reporters]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: all(len(r.accepted) >= 5 for r in reporters), 20, "reports before the kill")
        before = {r.thing: len(r.accepted) for r in reporters}
        b.kill9()
        killed = time.monotonic()
        wait_for(lambda: all(len(r.accepted) >= before[r.thing] + 3 for r in reporters), 40,
                 "every device accepted again by the survivor")
        recovered = time.monotonic() - killed
        stop.set()
        for thread in threads:
            thread.join(20)
    finally:
        stop.set()
        for r in reporters:
            r.close()
    assert all(r.reconnected for r in reporters)
    wait_for(lambda: ready(a), 10, "the survivor ready (it owns all 64)")
    recorded: set[tuple[str, str]] = set()
    for r in reporters:
        stored = [int(d["value"]["number"]) for page in iot.get_paginator("list_metric_values").paginate(
            thingName=r.thing, metricName="seq", **window()) for d in page["metricDatumList"]]
        assert len(stored) == len(set(stored)), f"{r.thing}: a report stored twice"
        assert set(r.accepted) <= set(stored), f"{r.thing}: accepted reports lost"
        assert set(stored) - set(r.accepted) <= {r.attempted}  # at most the one in flight at the stop
        listed = [e for page in iot.get_paginator("list_violation_events").paginate(thingName=r.thing, **window())
                  for e in page["violationEvents"]]
        recorded |= {(e["violationId"], e["violationEventType"]) for e in listed}
        events = [e["violationEventType"] for e in listed]
        assert events == ["in-alarm", "alarm-cleared"] * (len(stored) // 2) + ["in-alarm"] * (len(stored) % 2), \
            f"{r.thing}: events {events} for {len(stored)} reports"
    assert_compacted_once(a.database_url)
    # Alerts: never one twice, never one without its event, and every event's alert either
    # received or still claimed in the outbox (the victim's claims, sent or not, are due again after
    # the claim's hold, minutes later: not waited for here). How many the victim held depends on
    # where its delivery loop was at the kill, so the account is per event, not a share.
    alerts: list[tuple[str, str]] = []

    def accounted_for() -> bool:
        while not hook.received.empty():
            message = hook.received.get_nowait()["message"]
            alerts.append((message["violationId"], message["violationEventType"]))
        pending, claimed = outbox_undelivered(a.database_url)
        return not pending and set(alerts) | claimed == recorded
    wait_for(accounted_for, 60, "every event's alert received or claimed (20 a second a destination)")
    assert len(alerts) == len(set(alerts)), "an alert sent twice"
    assert set(alerts) <= recorded
    print(f"kill -9: {len(alerts)} alerts of {len(recorded)} events delivered, none twice, "
          f"{len(recorded - set(alerts))} held by claims")
    print(f"kill -9: every device accepted again {recovered:.1f}s after the kill; "
          f"{sum(len(r.accepted) for r in reporters)} reports accepted in all; on the survivor, "
          f"{gauge(a, 'iotdefender_cluster_duplicates_settled_total'):.0f} resends settled as already stored, "
          f"{gauge(a, 'iotdefender_cluster_reports_unconfirmed_total'):.0f} answered ServiceUnavailable")


def intake_started(svc: ServiceProcess) -> bool:
    """Whether this node took the external broker's intake (its log says so)."""
    if svc.log_path is None:
        return False
    lines = [json.loads(line) for line in svc.log_path.read_text().splitlines() if line.startswith("{")]
    return any(line.get("event") == "singleton_started" and line.get("service") == "external-broker"
               for line in lines)


def test_two_broker_nodes_on_one_external_broker_answer_each_report_once_and_take_over(jetstream, postgres,
                                                                                       tmp_path: Path):
    """Two nodes given ``--mqtt-url`` of the same (operator's) Mosquitto: one reads the reports at a
    time (cluster_serve.external_intake), so each report is answered once — both used to subscribe
    to every report and answer it twice. When the reading node is killed, the other takes over and
    the devices, still connected to their broker, are answered again, also for the reports they
    published while no node read (the intake's persistent session)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.processes import Mosquitto

    external = Mosquitto()
    external.start()
    url = postgres.create_database(f"shared{time.time_ns()}")
    args = ["--cluster-url", jetstream.urls[0], "--report-min-interval", "0",
            "--mqtt-url", f"mqtt://127.0.0.1:{external.port}"]
    nodes = [ServiceProcess(data_dir=tmp_path / name, database_url=url, extra_args=args) for name in "ab"]
    devices: list[Device] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ServiceProcess.start, nodes))
        wait_for(lambda: any(intake_started(node) for node in nodes), 20, "one node reading the reports")
        reader = next(node for node in nodes if intake_started(node))
        standby = next(node for node in nodes if node is not reader)
        iot = standby.client()
        iot.create_security_profile(securityProfileName="ports", behaviors=[
            {"name": "ports", "metric": "aws:listening-tcp-ports",
             "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]}}}])
        iot.attach_security_profile(securityProfileName="ports", securityProfileTargetArn=ALL_THINGS)
        time.sleep(1.0)  # the attachment reaches both nodes (control notices)
        devices = [Device(external.port, f"shared-{n}") for n in range(4)]
        for report_id in range(1, 4):
            for device in devices:
                assert device.report(report(report_id, [443]))[0] == "json/accepted"
        time.sleep(1.0)  # a second answer would be here by now
        assert [device.replies.qsize() for device in devices] == [0, 0, 0, 0]
        assert not intake_started(standby)

        # Reports published while no node reads wait in the operator's broker for the intake's
        # session: the standby is held (SIGSTOP) so that they are published before it can take over.
        os.kill(standby.process.pid, signal.SIGSTOP)
        try:
            reader.kill9()
            killed = time.monotonic()
            for device in devices:  # still connected to the operator's broker
                device.publish(json.dumps(report(4, [443])).encode())
            time.sleep(1.0)
        finally:
            os.kill(standby.process.pid, signal.SIGCONT)
        wait_for(lambda: intake_started(standby), 15, "the standby reading the reports")
        took_over = time.monotonic() - killed
        for device in devices:  # answered by the standby, from the session the broker kept
            assert device.reply(timeout=15)[0] == "json/accepted"
        for device in devices:  # and what they publish now
            device.publish(json.dumps(report(5, [443])).encode())
            assert device.reply(timeout=15)[0] == "json/accepted"
        for device in devices:
            stored = iot.list_metric_values(thingName=device.thing, metricName="aws:listening-tcp-ports",
                                            **window())["metricDatumList"]
            assert len(stored) == 5
        print(f"external broker: the standby node reads the reports {took_over:.1f}s after the reader's kill -9 "
              "(held 1 s)")
    finally:
        for device in devices:
            device.close()
        for node in nodes:
            node.stop()
        external.stop()
