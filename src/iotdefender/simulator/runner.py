"""Run a simulated fleet against any MQTT broker: one connection per device, reports on a cadence.

Each device subscribes to its own ``/accepted`` and ``/rejected`` topics first, as AWS's agents do,
then reports every ``interval`` seconds (first report at a random offset so a fleet does not
report in lockstep). Anomalies switch on and off on chosen devices so violations appear and clear.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import cbor2
from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311

from iotdefender.brokers.external import BrokerUrl
from iotdefender.simulator.devices import Anomaly, SimulatedDevice, shorten


@dataclass
class FleetStats:
    sent: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    extra_messages: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    pending: dict[tuple[str, int], float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2) if ordered else None

        return {"reports_sent": self.sent, "accepted": self.accepted, "rejected": dict(self.rejected),
                "unanswered": len(self.pending), "anomaly_messages": self.extra_messages,
                "reply_latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": ordered[-1] if ordered else None}}


@dataclass
class SimulationSettings:
    broker: BrokerUrl
    devices: int = 10
    interval: float = 300.0
    duration: float = 600.0
    encoding: str = "json"
    short_keys: bool = False
    custom_metrics: bool = True
    prefix: str = "device-"
    anomalies: list[Anomaly] = field(default_factory=list)


# How often a device repeats its active anomalies (a message flood's 50 messages, ...).
ANOMALY_PERIOD_S = 0.5


class Fleet:
    def __init__(self, settings: SimulationSettings) -> None:
        # A device the broker disconnects (auth-storm) may still be writing: gmqtt logs each such
        # write as a warning, which would drown the progress display.
        logging.getLogger("gmqtt").setLevel(logging.ERROR)
        self.settings = settings
        self.stats = FleetStats()
        self.things = [f"{settings.prefix}{i:04d}" for i in range(settings.devices)]
        self._clients: dict[str, Client] = {}
        self._started = 0.0

    def active_anomalies(self, thing: str) -> set[str]:
        elapsed = time.monotonic() - self._started
        return {a.kind for a in self.settings.anomalies if a.thing == thing and a.active(elapsed)}

    async def _connect(self, thing: str) -> Client:
        client = Client(thing, clean_session=True)
        client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})
        if self.settings.broker.username:
            client.set_auth_credentials(self.settings.broker.username, self.settings.broker.password)
        client.on_message = self._on_reply
        client.on_connect = lambda c, *a: c.subscribe(
            f"$aws/things/{thing}/defender/metrics/{self.settings.encoding}/+", qos=1)
        await client.connect(self.settings.broker.host, self.settings.broker.port, version=MQTTv311,
                             keepalive=60)
        return client

    def _on_reply(self, client: Client, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        parts = topic.split("/")
        body = json.loads(payload) if self.settings.encoding == "json" else cbor2.loads(payload)
        sent = self.stats.pending.pop((parts[2], body.get("reportId")), None)
        if sent is not None:
            self.stats.latencies_ms.append((time.perf_counter() - sent) * 1000)
        if body.get("status") == "ACCEPTED":
            self.stats.accepted += 1
        else:
            self.stats.rejected[(body.get("statusDetails") or {}).get("ErrorCode", "unknown")] += 1
        return 0

    def _payload(self, device: SimulatedDevice, report_id: int) -> bytes:
        document = device.report(report_id, self.active_anomalies(device.thing))
        if self.settings.short_keys:
            document = shorten(document)
        return json.dumps(document).encode() if self.settings.encoding == "json" else cbor2.dumps(document)

    async def _device_loop(self, index: int, thing: str, deadline: float) -> None:
        device = SimulatedDevice(thing, seed=index, custom_metrics=self.settings.custom_metrics)
        await asyncio.sleep(random.uniform(0, min(self.settings.interval, 5.0)))
        topic = f"$aws/things/{thing}/defender/metrics/{self.settings.encoding}"
        next_report = next_anomaly = time.monotonic()
        while time.monotonic() < deadline:
            client = self._clients[thing]
            if not client.is_connected:  # refused by the ACL (auth-storm): wait for the reconnection
                await asyncio.sleep(0.2)
                continue
            now = time.monotonic()
            if now >= next_report:
                report_id = int(time.time() * 1000)
                self.stats.pending[(thing, report_id)] = time.perf_counter()
                client.publish(topic, self._payload(device, report_id), qos=1)
                self.stats.sent += 1
                # The interval counts from this report, as AWS's agents sleep it between reports:
                # counted from the schedule, a late wake-up was followed by a catch-up report sent
                # at once, which the service throttles.
                next_report = now + self.settings.interval
            if now >= next_anomaly:  # anomalies keep their own pace whatever the report interval
                await self._anomalies(thing, client)
                next_anomaly = now + ANOMALY_PERIOD_S
            # Woken for the next report or anomaly: a fixed 0.5 s sleep made any interval below
            # it 0.5 s (the README's recipe asked 0.1 s and got 0.5 s).
            await asyncio.sleep(max(0.0, min(next_report, next_anomaly) - time.monotonic()))

    async def _anomalies(self, thing: str, client: Client) -> None:
        """One round of the device's active anomalies that are not in its reports."""
        anomalies = self.active_anomalies(thing)
        if "message-flood" in anomalies:
            for _ in range(50):
                client.publish(f"telemetry/{thing}", b'{"t": 21.5}', qos=0)
            self.stats.extra_messages += 50
        if "auth-storm" in anomalies:
            client.publish(f"$aws/things/{thing}-neighbour/shadow/update", b"{}", qos=0)
            self.stats.extra_messages += 1
        if "reconnect-loop" in anomalies:
            await client.disconnect()
            self._clients[thing] = await self._connect(thing)

    async def _progress(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            elapsed = time.monotonic() - self._started
            active = sorted({f"{a.kind}:{a.thing}" for a in self.settings.anomalies if a.active(elapsed)})
            line = (f"\r[{elapsed:5.0f}s] sent {self.stats.sent}  accepted {self.stats.accepted}  "
                    f"rejected {sum(self.stats.rejected.values())}  anomalies: {', '.join(active) or 'none'}")
            if sys.stderr.isatty():
                print(line.ljust(110), end="", file=sys.stderr, flush=True)

    async def run(self) -> dict[str, Any]:
        self._started = time.monotonic()
        for thing in self.things:
            self._clients[thing] = await self._connect(thing)
        await asyncio.sleep(0.5)  # subscriptions acknowledged before the first report
        deadline = self._started + self.settings.duration
        await asyncio.gather(self._progress(deadline),
                             *(self._device_loop(i, t, deadline) for i, t in enumerate(self.things)))
        await asyncio.sleep(min(2.0, self.settings.interval))  # the last replies
        for client in self._clients.values():
            await client.disconnect()
        if sys.stderr.isatty():
            print(file=sys.stderr)
        return self.stats.summary()
