"""Cloud-side accounting: broker events accounted per second, and what accounting costs the broker.

1. in-process: events per second through the aggregator (publish events on 50 topics from 10k
   clients, plus connects and deliveries), the cost a broker hook adds per event;
2. the embedded broker's plain-message rate to a bare subscriber, with accounting on and with
   --no-cloud-metrics, in one run: ratio = on / off.

    .venv/bin/python bench/cloud_accounting.py [--messages 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment  # noqa: E402
from iotdefender.cloud.aggregator import Aggregator  # noqa: E402
from tests.support.processes import ServiceProcess  # noqa: E402

RESULTS = Path(__file__).with_name("results")


class Counter:
    """Messages received, and the rate between the first and the last."""

    def __init__(self) -> None:
        self.count, self.first, self.last = 0, 0.0, 0.0

    def hit(self) -> None:
        now = time.perf_counter()
        self.first = self.first or now
        self.last = now
        self.count += 1

    def rate(self) -> float:
        return self.count / (self.last - self.first) if self.count > 1 else 0.0


async def connect(port: int, name: str) -> Client:
    client = Client(name, clean_session=True)
    await client.connect("127.0.0.1", port, version=MQTTv311, keepalive=60)
    return client


async def _settle(count, expected: int, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """Until `expected` arrived, nothing arrived for 5 s (QoS 0 drops), or `timeout` passed."""
    deadline = time.perf_counter() + timeout
    last, stable_since = -1, time.perf_counter()
    while time.perf_counter() < deadline and count() < expected:
        await asyncio.sleep(0.1)
        if count() != last:
            last, stable_since = count(), time.perf_counter()
        elif time.perf_counter() - stable_since > 5:
            return


def aggregator_rate(events: int) -> float:
    agg = Aggregator(window_s=300)
    topics = [f"factory/line{i % 5}/sensor{i}" for i in range(50)]
    started = time.perf_counter()
    for i in range(events):
        client = f"dev{i % 10000}"
        kind = i % 10
        if kind == 0:
            agg.connect_attempt(client, "10.0.0.1", True, 1.0)
        elif kind == 1:
            agg.message_received(client, topics[i % 50], 1.0)
        else:
            agg.message_sent(client, topics[i % 50], 200, 1.0)
    return events / (time.perf_counter() - started)


async def broker_rate(accounting: bool, messages: int) -> float:
    # One connection publishes as fast as it can (the broker's own rate is measured): no per-connection limit.
    extra = ["--mqtt-publish-rate", "0"] + ([] if accounting else ["--no-cloud-metrics"])
    service = ServiceProcess(data_dir=Path(tempfile.mkdtemp(prefix="iotdefender-bench-")), extra_args=extra)
    service.start()
    try:
        received = Counter()
        subscriber = await connect(service.mqtt_port, "bench-sub")
        subscriber.on_message = lambda c, t, p, q, props: (received.hit(), 0)[1]
        subscriber.subscribe("bench/#", qos=0)
        publisher = await connect(service.mqtt_port, "bench-pub")
        await asyncio.sleep(0.5)
        payload = b"x" * 200
        for i in range(messages):
            publisher.publish(f"bench/topic{i % 50}", payload, qos=0)
            if i % 500 == 0:
                await asyncio.sleep(0)
        await _settle(lambda: received.count, messages, 60)
        await publisher.disconnect()
        await subscriber.disconnect()
        return received.rate()
    finally:
        service.stop()
        shutil.rmtree(service.data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=30000)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    events_per_s = aggregator_rate(args.events)
    off = asyncio.run(broker_rate(False, args.messages))
    on = asyncio.run(broker_rate(True, args.messages))
    result = {
        "benchmark": "cloud_accounting",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": environment(),
        "aggregator_events_per_s": round(events_per_s, 1),
        "embedded_broker_msgs_per_s_accounting_off": round(off, 1),
        "embedded_broker_msgs_per_s_accounting_on": round(on, 1),
        "ratio_on_over_off": round(on / off, 3) if off else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cloud_accounting.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
