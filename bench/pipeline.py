"""End-to-end pipeline benchmark: reports accepted and evaluated per second, beside a bare subscriber.

One run, one broker (the embedded one, or a Mosquitto the script starts and the service joins with
--mqtt-url), four phases on the same machine:

1. bare:     the same payloads published on a plain topic to a bare gmqtt subscriber (transport ceiling);
2. pipeline: reports for --things devices published as fast as the broker takes them; the service
             parses, stores, evaluates 3 profiles x 10 behaviors and answers; we count `accepted`;
3. latency:  a fixed offered load (--rate reports/s); publish -> `accepted` latency per report.
             `accepted` is sent only after the transaction that stores the report's datapoints
             *and its violation events* has committed, so this is publish -> stored event.
4. alerts:   --alerts registered devices in a group with a fourth profile that has an SNS alert
             target, each violating once at --alert-rate; publish -> the alert received by a
             webhook the script runs (the local subscription of that topic).

ratio = pipeline rate / bare rate. Results: bench/results/pipeline-<broker>.json.

    .venv/bin/python bench/pipeline.py --broker embedded|mosquitto [--reports 20000] [--rate 2000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment  # noqa: E402
from tests.support.webhook import WebhookReceiver  # noqa: E402
from tests.support.processes import Mosquitto, ServiceProcess  # noqa: E402

RESULTS = Path(__file__).with_name("results")
ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"


def behaviors(profile: int) -> list[dict]:
    """Ten behaviors over the device-side and custom metrics a report carries."""
    base = [
        ("tcp", "aws:listening-tcp-ports", {"comparisonOperator": "in-port-set",
                                            "value": {"ports": [22, 80, 443, 8883] + list(range(9000, 9010))}}),
        ("udp", "aws:listening-udp-ports", {"comparisonOperator": "not-in-port-set", "value": {"ports": [23, 69]}}),
        ("ntcp", "aws:num-listening-tcp-ports", {"comparisonOperator": "less-than", "value": {"count": 40}}),
        ("bytes", "aws:all-bytes-out", {"comparisonOperator": "less-than", "value": {"count": 10**9},
                                        "durationSeconds": 300}),
        ("pkts", "aws:all-packets-in", {"comparisonOperator": "less-than-equals", "value": {"count": 10**8}}),
        ("dest", "aws:destination-ip-addresses", {"comparisonOperator": "in-cidr-set",
                                                  "value": {"cidrs": ["10.0.0.0/8", "192.168.0.0/16"]}}),
        ("conns", "aws:num-established-tcp-connections", {"comparisonOperator": "less-than", "value": {"count": 100}}),
        ("cpu", "cpu", {"comparisonOperator": "less-than", "value": {"number": 95}}),
        ("temp", "temperature", {"comparisonOperator": "less-than", "value": {"number": 80 + profile},
                                 "consecutiveDatapointsToAlarm": 3}),
        ("fw", "firmware", {"comparisonOperator": "in-set", "value": {"strings": ["1.0.0", "1.0.1"]}}),
    ]
    return [{"name": f"{name}{profile}", "metric": metric, "criteria": criteria} for name, metric, criteria in base]


def payload(thing_index: int, report_id: int, violating: bool) -> bytes:
    """A realistic ~1.5 KB report (10 TCP, 5 UDP ports, 12 connections, stats, 3 custom metrics)."""
    return orjson.dumps({
        "header": {"report_id": report_id, "version": "1.0"},
        "metrics": {
            "listening_tcp_ports": {"ports": [{"interface": "eth0", "port": p} for p in
                                              [22, 80, 443, 8883, 9000, 9001, 9002, 9003, 9004,
                                               4444 if violating else 9005]], "total": 10},
            "listening_udp_ports": {"ports": [{"interface": "eth0", "port": p} for p in (53, 67, 123, 161, 5353)],
                                    "total": 5},
            "network_stats": {"bytes_in": 123456, "bytes_out": 654321, "packets_in": 1234, "packets_out": 4321},
            "tcp_connections": {"established_connections": {"connections": [
                {"local_interface": "eth0", "local_port": 40000 + i, "remote_addr": f"10.0.{i}.{thing_index % 250}:443"}
                for i in range(12)], "total": 12}},
        },
        "custom_metrics": {"cpu": [{"number": 42.5}], "temperature": [{"number": 55.0}],
                           "firmware": [{"string_list": ["1.0.1"]}]},
    })


async def connect(port: int, name: str) -> Client:
    client = Client(name, clean_session=True)
    await client.connect("127.0.0.1", port, version=MQTTv311, keepalive=60)
    return client


class Counter:
    def __init__(self) -> None:
        self.count, self.first, self.last = 0, None, None
        self.arrivals: dict[str, float] = {}

    def hit(self, key: str | None = None) -> None:
        now = time.perf_counter()
        self.first = self.first or now
        self.last = now
        self.count += 1
        if key is not None:
            self.arrivals[key] = now

    def rate(self) -> float:
        return self.count / (self.last - self.first) if self.count > 1 else 0.0


ALERT_TOPIC = "arn:aws:sns:us-east-1:123456789012:bench-alerts"
ALERT_GROUP = "arn:aws:iot:us-east-1:123456789012:thinggroup/bench-alerting"


def _alerting_setup(iot, count: int) -> None:  # type: ignore[no-untyped-def]
    """A fourth profile, with an SNS alert target, on a group of `count` registered things only."""
    iot.create_thing_group(thingGroupName="bench-alerting")
    for i in range(count):
        iot.create_thing(thingName=f"alert{i}")
        iot.add_thing_to_thing_group(thingGroupName="bench-alerting", thingName=f"alert{i}")
    known = [22, 80, 443, 8883] + list(range(9000, 9010))
    iot.create_security_profile(
        securityProfileName="bench-alerts",
        behaviors=[{"name": "alert-ports", "metric": "aws:listening-tcp-ports",
                    "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": known}}}],
        alertTargets={"SNS": {"alertTargetArn": ALERT_TOPIC, "roleArn": "arn:aws:iam::123456789012:role/bench"}})
    iot.attach_security_profile(securityProfileName="bench-alerts", securityProfileTargetArn=ALERT_GROUP)


def _collect_alerts(hook: WebhookReceiver, arrivals: dict[str, float]) -> None:
    """Arrival time of each in-alarm alert, by thing (a thread reading the receiver's queue)."""
    while True:
        item = hook.received.get()
        message = item["message"]
        if message.get("violationEventType") == "in-alarm":
            arrivals.setdefault(message["thingName"], time.perf_counter())


async def run(args: argparse.Namespace) -> dict:
    broker = None
    hook = WebhookReceiver("bench-secret")
    subscriptions = Path(tempfile.mkdtemp(prefix="iotdefender-bench-hook-")) / "subscriptions.json"
    subscriptions.write_text(json.dumps({ALERT_TOPIC: [{"webhook": hook.url, "secret": "bench-secret"}]}))
    extra = ["--report-min-interval", "0", "--mqtt-acl", "any", "--alert-subscriptions", str(subscriptions)]
    if args.broker == "mosquitto":
        broker = Mosquitto()
        broker.start()
        extra += ["--mqtt-url", f"mqtt://127.0.0.1:{broker.port}"]
    service = ServiceProcess(data_dir=Path(tempfile.mkdtemp(prefix="iotdefender-bench-")), extra_args=extra)
    service.start()
    port = broker.port if broker else service.mqtt_port
    try:
        iot = service.client()
        iot.create_custom_metric(metricName="cpu", metricType="number")
        iot.create_custom_metric(metricName="temperature", metricType="number")
        iot.create_custom_metric(metricName="firmware", metricType="string-list")
        for p in range(3):
            iot.create_security_profile(securityProfileName=f"bench{p}", behaviors=behaviors(p))
            iot.attach_security_profile(securityProfileName=f"bench{p}", securityProfileTargetArn=ALL_THINGS)
        _alerting_setup(iot, args.alerts)

        sample = payload(0, 1, False)
        publisher = await connect(port, "bench-publisher")

        # Phase 1: bare subscriber on a plain topic, same payload size.
        bare = Counter()
        bare_sub = await connect(port, "bench-bare")
        bare_sub.on_message = lambda c, t, p, q, props: (bare.hit(), 0)[1]
        bare_sub.subscribe("bench/bare", qos=0)
        await asyncio.sleep(0.5)
        for i in range(args.reports):
            publisher.publish("bench/bare", sample, qos=0)
            if i % 500 == 0:
                await asyncio.sleep(0)
        await _settle(lambda: bare.count, args.reports, 60)

        # Phase 2: the pipeline at full speed.
        replies = Counter()
        rejected = Counter()

        def on_reply(c, topic, p, q, props):  # type: ignore[no-untyped-def]
            if topic.endswith("/accepted"):
                replies.hit(topic.split("/")[2] + ":" + str(orjson.loads(p)["reportId"]))
            else:
                rejected.hit()
            return 0

        reply_sub = await connect(port, "bench-replies")
        reply_sub.on_message = on_reply
        reply_sub.subscribe("$aws/things/+/defender/metrics/json/+", qos=0)
        await asyncio.sleep(0.5)
        started = time.perf_counter()
        for i in range(args.reports):
            thing = i % args.things
            publisher.publish(f"$aws/things/dev{thing}/defender/metrics/json",
                              payload(thing, 1 + i // args.things, (i // args.things) % 7 == 3), qos=0)
            if i % 200 == 0:
                await asyncio.sleep(0)
        publish_s = time.perf_counter() - started
        await _settle(lambda: replies.count + rejected.count, args.reports, 120)
        pipeline_rate = replies.count / (replies.last - started) if replies.count else 0.0

        # Phase 3: latency at a fixed offered load.
        latency_replies = Counter()
        reply_sub.on_message = lambda c, t, p, q, props: (latency_replies.hit(
            t.split("/")[2] + ":" + str(orjson.loads(p)["reportId"])) if t.endswith("/accepted") else None, 0)[1]
        sent: dict[str, float] = {}
        total = int(args.rate * args.latency_seconds)
        base_id = 10_000_000
        interval = 1.0 / args.rate
        t0 = time.perf_counter()
        for i in range(total):
            target = t0 + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            thing = i % args.things
            rid = base_id + i // args.things
            key = f"lat{thing}:{rid}"
            sent[key] = time.perf_counter()
            publisher.publish(f"$aws/things/lat{thing}/defender/metrics/json", payload(thing, rid, False), qos=0)
        offered = total / (time.perf_counter() - t0)
        await _settle(lambda: latency_replies.count, total, 60)
        latencies = sorted((latency_replies.arrivals[k] - sent[k]) * 1000 for k in sent if k in latency_replies.arrivals)

        # Phase 4: publish -> alert delivered to a webhook, one violation per device of the alerting
        # group, at --alert-rate (below the per-destination rate limit of 20 alerts/s, which spaces a
        # burst out by design: docs/alerts.md).
        alert_arrivals: dict[str, float] = {}
        threading.Thread(target=_collect_alerts, args=(hook, alert_arrivals), daemon=True).start()
        alert_sent: dict[str, float] = {}
        t0 = time.perf_counter()
        for i in range(args.alerts):
            delay = t0 + i / args.alert_rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            alert_sent[f"alert{i}"] = time.perf_counter()
            publisher.publish(f"$aws/things/alert{i}/defender/metrics/json", payload(i, 1, True), qos=0)
        await _settle(lambda: len(alert_arrivals), args.alerts, 60)
        alert_latencies = sorted((alert_arrivals[t] - alert_sent[t]) * 1000 for t in alert_sent if t in alert_arrivals)
        for client in (publisher, bare_sub, reply_sub):
            await client.disconnect()
    finally:
        service.stop()
        hook.close()
        if broker:
            broker.stop()

    def pct(q: float, values: list[float] | None = None) -> float | None:
        values = latencies if values is None else values
        return round(values[min(len(values) - 1, int(len(values) * q))], 2) if values else None

    bare_rate = bare.rate()
    return {
        "benchmark": "pipeline",
        "broker": args.broker,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": environment(),
        "profiles_x_behaviors": "3 x 10",
        "report_bytes": len(sample),
        "reports": args.reports,
        "things": args.things,
        "bare_subscriber_per_s": round(bare_rate, 1),
        "publisher_per_s": round(args.reports / publish_s, 1),
        "reports_per_s": round(pipeline_rate, 1),
        "accepted": replies.count,
        "rejected": rejected.count,
        "ratio": round(pipeline_rate / bare_rate, 3) if bare_rate else None,
        "latency_offered_per_s": round(offered, 1),
        "latency_replies": len(latencies),
        "latency_lost": total - len(latencies),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1], 2) if latencies else None,
        "alert_latency": {"alerts": args.alerts, "offered_per_s": args.alert_rate, "delivered": len(alert_latencies),
                          "p50_ms": pct(0.50, alert_latencies), "p99_ms": pct(0.99, alert_latencies),
                          "max_ms": round(alert_latencies[-1], 2) if alert_latencies else None},
        "note": "publish -> accepted; accepted follows the commit of the report's datapoints and events. "
                "alert_latency: publish -> the in-alarm alert received by a webhook (HMAC-signed POST). "
                "Client, broker and service share the machine's cores.",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


async def _settle(count, expected: int, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.perf_counter() + timeout
    last, stable_since = -1, time.perf_counter()
    while time.perf_counter() < deadline and count() < expected:
        await asyncio.sleep(0.1)
        if count() != last:
            last, stable_since = count(), time.perf_counter()
        elif time.perf_counter() - stable_since > 5:
            return  # nothing more is coming (QoS 0 drops under overload are counted as missing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=("embedded", "mosquitto"), default="embedded")
    parser.add_argument("--reports", type=int, default=20000)
    parser.add_argument("--things", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1000.0, help="offered load of the latency phase")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--alerts", type=int, default=100, help="devices that violate once in the alert phase")
    parser.add_argument("--alert-rate", type=float, default=10.0, help="violations per second in the alert phase")
    parser.add_argument("--quick", action="store_true", help="reduced run (< 60 s), one JSON line")
    args = parser.parse_args()
    if args.quick:
        args.reports, args.things, args.rate, args.latency_seconds, args.alerts = 4000, 500, 500.0, 4.0, 20
    result = asyncio.run(run(args))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"pipeline-{args.broker}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
