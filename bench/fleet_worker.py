"""One load-generator process of the fleet: a few thousand devices, one MQTT connection each.

Each device connects from this process's loopback source address with its thing name as client
id, subscribes at QoS 1 to its own ``$aws/things/<thing>/defender/metrics/json/+`` and, when told,
publishes reports at QoS 1 on ``$aws/things/<thing>/defender/metrics/json``. A device whose
connection drops reconnects by itself with jittered exponential backoff, as AWS's SDKs do, so a
restart of the broker is a real reconnect storm. The parent (bench/fleet.py) drives the process
through a pipe with small commands and gets figures back; timestamps are ``time.monotonic()``,
which is one clock for every process on the machine.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import re
import ssl
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from bench import mqtt_wire

REPORT_ID = re.compile(rb'"reportId":\s*(\d+)')
HANDSHAKE_TIMEOUT_S = 15.0
BACKOFF_CAP_S = 2.0
KEEPALIVE_S = 1200  # AWS IoT Device SDK's default; the benchmark's phases are far shorter


@dataclass(frozen=True)
class WorkerSpec:
    """What one process simulates: which things, from which source address, to which broker."""

    index: int
    things: list[str]
    source: str
    host: str
    port: int
    max_handshakes: int = 256  # connects in progress at once in this process (the listen backlog is finite)
    #: Mutual TLS: (the broker's CA file, a directory of THING.pem and THING.key), each device with
    #: its own certificate (--mqtt-auth cert); None: plain TCP.
    tls: tuple[str, str] | None = None
    #: Reconnect backoff (first delay, cap), doubled after each failure and jittered. The default
    #: cap is short so that a storm measures the broker, not the devices' waiting; AWS IoT's SDKs
    #: start at 1 s and stop doubling at 128 s (the iOS SDK's AWSIoTMQTTConfiguration documents it),
    #: which a refused device then really does.
    backoff_s: tuple[float, float] = (0.25, BACKOFF_CAP_S)


class Device(asyncio.Protocol):
    """One device's connection; the same object is reused for each reconnection."""

    def __init__(self, fleet: "LocalFleet", thing: str) -> None:
        self.fleet, self.thing = fleet, thing
        self.connect_packet = mqtt_wire.connect(thing, KEEPALIVE_S)
        self.subscribe_packet = mqtt_wire.subscribe(1, f"$aws/things/{thing}/defender/metrics/json/+")
        self.report_topic = f"$aws/things/{thing}/defender/metrics/json"
        self.transport: asyncio.Transport | None = None
        self.reader = mqtt_wire.Reader()
        self.subscribed = asyncio.Event()
        self.lost = asyncio.Event()
        self.packet_id = 1
        self.refused = 0
        self.lost_at: float | None = None  # CLOCK_MONOTONIC: the last time a subscribed connection ended
        self.tls: ssl.SSLContext | None = None
        if fleet.spec.tls is not None:
            ca_file, directory = fleet.spec.tls
            self.tls = ssl.create_default_context(cafile=ca_file)
            self.tls.load_cert_chain(os.path.join(directory, f"{thing}.pem"), os.path.join(directory, f"{thing}.key"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.reader = mqtt_wire.Reader()
        self.subscribed.clear()
        self.lost.clear()
        self.transport.write(self.connect_packet)

    def data_received(self, data: bytes) -> None:
        for packet in self.reader.feed(data):
            if packet.kind == mqtt_wire.PUBLISH:
                topic, packet_id, payload = packet.publish_parts()
                if packet_id is not None:
                    self.transport.write(mqtt_wire.puback(packet_id))
                self.fleet.on_reply(self, topic, payload)
            elif packet.kind == mqtt_wire.CONNACK:
                if packet.body[1] != 0:
                    self.refused += 1
                    self.transport.close()
                else:
                    self.transport.write(self.subscribe_packet)
            elif packet.kind == mqtt_wire.SUBACK:
                if packet.body[-1] == 0x80:
                    self.transport.close()  # subscription refused (an ACL): counts as not connected
                else:
                    self.subscribed.set()
                    self.fleet.on_subscribed(self)

    def connection_lost(self, exc: Exception | None) -> None:
        was_up = self.subscribed.is_set()
        if was_up:
            self.lost_at = time.monotonic()
        self.transport = None
        self.subscribed.clear()
        self.lost.set()
        self.fleet.on_lost(self, was_up)

    def publish(self, payload: bytes) -> None:
        self.packet_id = self.packet_id % 65535 + 1
        self.transport.write(mqtt_wire.publish_header(self.report_topic, self.packet_id, len(payload)) + payload)

    @property
    def up(self) -> bool:
        return self.transport is not None and self.subscribed.is_set()


class LocalFleet:
    """The devices of this process, their connection loops, and the figures the parent asks for."""

    def __init__(self, spec: WorkerSpec, payloads: tuple[bytes, bytes]) -> None:
        self.spec = spec
        self.prefix, self.suffix = payloads
        self.devices = [Device(self, thing) for thing in spec.things]
        self.handshakes = asyncio.Semaphore(spec.max_handshakes)
        self.attempts = 0
        self.failures = 0
        self.up_count = 0
        self.running = True
        self.sent: dict[int, float] = {}
        self.sent_by: dict[int, str] = {}  # report id -> its device's thing
        self.answered: dict[int, float] = {}
        self.rejected = 0
        self.closed_loop: dict[int, Device] | None = None
        self.storm: set[str] | None = None
        self.storm_dropped: set[str] = set()
        self.storm_done = asyncio.Event()
        self.storm_first_drop: float | None = None
        self.attempts_at_arm = 0
        self.refused_at_arm = 0
        self.storm_done_at: float | None = None

    # -- connections ---------------------------------------------------------------------------

    async def keep_connected(self, device: Device) -> None:
        """Connect, and reconnect after every loss, until the process is told to stop."""
        loop = asyncio.get_running_loop()
        failures_in_row = 0
        while self.running:
            async with self.handshakes:
                self.attempts += 1
                try:
                    await loop.create_connection(lambda: device, self.spec.host, self.spec.port,
                                                 local_addr=(self.spec.source, 0), ssl=device.tls)
                    await asyncio.wait_for(self.wait_up_or_lost(device), HANDSHAKE_TIMEOUT_S)
                except (OSError, asyncio.TimeoutError):
                    pass
            if device.up:
                failures_in_row = 0
                await device.lost.wait()
            else:
                self.failures += 1
                if device.transport is not None:
                    device.transport.abort()
                failures_in_row += 1
            if not self.running:
                return
            # Jittered exponential backoff (AWS SDK style; ``backoff_s``).
            first, cap = self.spec.backoff_s
            await asyncio.sleep(min(cap, first * 2 ** min(failures_in_row, 10)) * random.uniform(0.2, 1.0))

    @staticmethod
    async def wait_up_or_lost(device: Device) -> None:
        waiters = [asyncio.ensure_future(device.subscribed.wait()), asyncio.ensure_future(device.lost.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def on_subscribed(self, device: Device) -> None:
        self.up_count += 1
        if self.storm is not None and device.thing in self.storm_dropped:
            self.storm.add(device.thing)
            if len(self.storm) == len(self.devices):
                self.storm_done_at = time.monotonic()
                self.storm_done.set()

    def on_lost(self, device: Device, was_up: bool) -> None:
        self.up_count -= was_up
        if self.storm is not None:
            self.storm_first_drop = self.storm_first_drop or time.monotonic()
            self.storm_dropped.add(device.thing)
            self.storm.discard(device.thing)

    async def connect_all(self, timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        for device in self.devices:
            asyncio.ensure_future(self.keep_connected(device))
        deadline = started + timeout
        while self.up_count < len(self.devices) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return {"started": started, "done": time.monotonic(), "up": self.up_count, "attempts": self.attempts,
                "failures": self.failures, "refused": self.refused()}

    def refused(self) -> int:
        """CONNACKs with a non-zero return code so far."""
        return sum(d.refused for d in self.devices)

    # -- reports -------------------------------------------------------------------------------

    def payload(self, report_id: int) -> bytes:
        return self.prefix + str(report_id).encode() + self.suffix

    def on_reply(self, device: Device, topic: str, payload: bytes) -> None:
        now = time.monotonic()
        match = REPORT_ID.search(payload)
        if match is None:
            return
        report_id = int(match.group(1))
        if report_id not in self.sent or report_id in self.answered:
            return
        if topic.endswith("/accepted"):
            self.answered[report_id] = now
        else:
            self.rejected += 1
            self.answered[report_id] = now
        if self.closed_loop is not None and self.closed_loop.get(report_id) is device:
            del self.closed_loop[report_id]
            self.send(device, report_id + len(self.devices))

    def send(self, device: Device, report_id: int) -> bool:
        if not device.up:
            return False
        self.sent[report_id] = time.monotonic()
        self.sent_by[report_id] = device.thing
        if self.closed_loop is not None:
            self.closed_loop[report_id] = device
        device.publish(self.payload(report_id))
        return True

    async def open_loop(self, rate: float, seconds: float, start_at: float, first_id: int,
                        drain_s: float) -> dict[str, Any]:
        """Reports at `rate`/s spread evenly over this process's devices, then wait for the replies."""
        self.sent, self.sent_by, self.answered, self.rejected = {}, {}, {}, 0
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        total, skipped, i = int(rate * seconds), 0, 0
        while i < total:
            due = min(total, int((time.monotonic() - start_at) * rate) + 1)
            while i < due:
                device = self.devices[i % len(self.devices)]
                if not self.send(device, first_id + i):
                    skipped += 1
                i += 1
            await asyncio.sleep(0.002)
        publish_end = time.monotonic()
        await self.drain(drain_s)
        return {"sent": len(self.sent), "skipped": skipped, "publish_end": publish_end, **self.figures()}

    async def bursts(self, period: float, rounds: int, start_at: float, first_id: int, drain_s: float) -> dict[str, Any]:
        """Every device publishes at once, at ``start_at`` and every ``period`` after (one clock for
        every process: the whole fleet's bursts coincide), ``rounds`` times; then the replies."""
        self.sent, self.sent_by, self.answered, self.rejected = {}, {}, {}, 0
        skipped, report_id = 0, first_id
        for round_ in range(rounds):
            await asyncio.sleep(max(0.0, start_at + round_ * period - time.monotonic()))
            for device in self.devices:
                if not self.send(device, report_id):
                    skipped += 1
                report_id += 1
        await self.drain(drain_s)
        return {"sent": len(self.sent), "skipped": skipped, **self.figures()}

    async def closed_loop_run(self, seconds: float, start_at: float, first_id: int) -> dict[str, Any]:
        """Every connected device keeps one report in flight: the most the system answers."""
        self.sent, self.sent_by, self.answered, self.rejected, self.closed_loop = {}, {}, {}, 0, {}
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        for n, device in enumerate(self.devices):
            self.send(device, first_id + n)
        await asyncio.sleep(max(0.0, start_at + seconds - time.monotonic()))
        self.closed_loop = None
        end = start_at + seconds
        in_window = sum(1 for t in self.answered.values() if t <= end)
        return {"answered_in_window": in_window, "window_s": seconds, "sent": len(self.sent)}

    async def drain(self, limit_s: float) -> None:
        """Until every report is answered, or nothing arrived for 3 s, or `limit_s` passed."""
        deadline = time.monotonic() + limit_s
        last, since = -1, time.monotonic()
        while len(self.answered) < len(self.sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if len(self.answered) != last:
                last, since = len(self.answered), time.monotonic()
            elif time.monotonic() - since > 3:
                return

    def figures(self) -> dict[str, Any]:
        answered = [(t, (self.answered[r] - t) * 1000) for r, t in self.sent.items() if r in self.answered]
        return {"answered": len(self.answered), "rejected": self.rejected,
                "latencies_ms": [latency for _, latency in answered],
                "sent_at": [sent_at for sent_at, _ in answered],  # CLOCK_MONOTONIC: one clock for all processes
                "last_answer": max(self.answered.values(), default=None),
                "unanswered_things": sorted({self.sent_by[r] for r in self.sent if r not in self.answered})}

    # -- reconnect storm -----------------------------------------------------------------------

    def arm_storm(self) -> None:
        self.storm, self.storm_dropped, self.storm_first_drop = set(), set(), None
        self.storm_done.clear()
        self.attempts_at_arm = self.attempts
        self.refused_at_arm = self.refused()

    async def wait_storm(self, timeout: float) -> dict[str, Any]:
        try:
            await asyncio.wait_for(self.storm_done.wait(), timeout)
            done = self.storm_done_at
        except asyncio.TimeoutError:
            done = None
        figures = {"done": done, "resubscribed": len(self.storm or ()), "dropped": len(self.storm_dropped),
                   "first_drop": self.storm_first_drop, "attempts": self.attempts - self.attempts_at_arm,
                   "refused": self.refused() - self.refused_at_arm}
        self.storm = None
        return figures


async def _serve(conn: Connection, spec: WorkerSpec, payloads: tuple[bytes, bytes]) -> None:
    loop = asyncio.get_running_loop()
    fleet = LocalFleet(spec, payloads)
    commands: asyncio.Queue[tuple] = asyncio.Queue()

    def readable() -> None:
        try:
            commands.put_nowait(conn.recv())
        except (EOFError, OSError):
            commands.put_nowait(("stop",))  # the parent is gone

    loop.add_reader(conn.fileno(), readable)
    while True:
        command, *args = await commands.get()
        if command == "stop":
            fleet.running = False
            for device in fleet.devices:
                if device.transport is not None:
                    device.transport.write(mqtt_wire.disconnect())
                    device.transport.close()
            await asyncio.sleep(0.2)
            return
        if command == "connect":
            reply = await fleet.connect_all(*args)
        elif command == "open_loop":
            reply = await fleet.open_loop(*args)
        elif command == "bursts":
            reply = await fleet.bursts(*args)
        elif command == "closed_loop":
            reply = await fleet.closed_loop_run(*args)
        elif command == "arm_storm":
            fleet.arm_storm()
            reply = {}
        elif command == "wait_storm":
            reply = await fleet.wait_storm(*args)
        elif command == "status":
            reply = {"up": fleet.up_count}
        elif command == "losses":  # the devices down now: when each lost its connection, its refusals
            reply = {d.thing: (d.lost_at, d.refused) for d in fleet.devices if not d.up}
        else:
            reply = {"error": f"unknown command {command}"}
        # Between phases, before answering (so outside any measured interval): what the phase left
        # alive (thousands of devices' coroutines, events, buffers) is collected once and frozen,
        # so that this process's own collector does not stop the clock during the next phase.
        # Unfrozen, its full collections took 50-150 ms at 3,750 devices per process: replies
        # waiting in this process meanwhile were timed late, for the bare responder and the
        # service alike.
        gc.collect()
        gc.freeze()
        os.set_blocking(conn.fileno(), True)  # the event loop made it non-blocking; replies can be large
        conn.send(reply)


def worker_main(conn: Connection, spec: WorkerSpec, payloads: tuple[bytes, bytes]) -> None:
    """Entry point of a load-generator process (multiprocessing target)."""
    import uvloop

    uvloop.run(_serve(conn, spec, payloads))
