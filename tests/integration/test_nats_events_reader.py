"""The reader of an external NATS broker's events and ``/connz`` counters (cloud/nats_events.py),
against a real nats-server with its MQTT listener and real MQTT devices."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from iotdefender.cloud.nats_events import NatsEventReader
from tests.support.mqtt import Device
from tests.support.processes import NatsServer


class Counts:
    """What the reader hands the cloud-side metrics: here, the messages sent per device."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.found_open: dict[str, Any] = {}  # client id -> address
        self.connected: list[str] = []

    def connect_attempt(self, client_id: str, address: Any, accepted: bool) -> None:
        self.connected.append(client_id)

    def connection_open(self, client_id: str, address: Any) -> None:
        self.found_open[client_id] = address

    def disconnect(self, client_id: str) -> None:
        pass

    def message_counts(self, client_id: str, sent: int, sent_bytes: int, received: int) -> None:
        self.sent[client_id] = self.sent.get(client_id, 0) + sent

    async def until(self, expected: dict[str, int]) -> None:
        """Until the counts are ``expected`` (10 s at most), and still are two polls later."""
        deadline = time.monotonic() + 10
        while {device: self.sent.get(device, 0) for device in expected} != expected:
            assert time.monotonic() < deadline, self.sent
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert {device: self.sent.get(device, 0) for device in expected} == expected


class Broker:
    """A nats-server and the devices connected to it, all closed at the end."""

    def __init__(self, server: NatsServer) -> None:
        self.server = server
        self.devices: list[Device] = []

    def device(self, client_id: str) -> Device:
        device = Device(self.server.mqtt_port, client_id, username="dev", password="dev")
        self.devices.append(device)
        return device

    def read(self, counts: Counts, body: Callable[[], Awaitable[None]], **options: Any) -> None:
        """Runs ``body`` while a reader counts into ``counts``."""
        async def go() -> None:
            reader = NatsEventReader(f"nats://sys:sys@127.0.0.1:{self.server.port}",
                                     f"http://127.0.0.1:{self.server.http_port}", counts, poll_s=0.2, **options)
            await reader.start()
            try:
                await body()
            finally:
                await reader.stop()
        asyncio.run(go())


@pytest.fixture
def broker() -> Iterator[Broker]:
    server = NatsServer()
    server.start()
    held = Broker(server)
    try:
        yield held
    finally:
        for device in held.devices:
            device.close()
        server.stop()


def send(device: Device, messages: int) -> None:
    for _ in range(messages):
        device.client.publish("telemetry/x", b"y", qos=1).wait_for_publish(5)


def test_every_open_connection_is_counted_across_pages(broker: Broker):
    """Every open connection is read, however many /connz pages they take (one request of at most
    100,000 left the connections beyond it uncounted)."""
    counts = Counts()

    async def body() -> None:
        for n in range(5):  # three pages of two
            send(broker.device(f"paged-{n}"), n + 3)
        await counts.until({f"paged-{n}": n + 3 for n in range(5)})

    broker.read(counts, body, connz_page=2)


def test_connections_open_at_the_start_count_from_it_and_their_disconnection_adds_nothing_before_it(broker: Broker):
    """A reader that starts while devices are connected (a restart, or a standby taking the reading
    over) has them connected from their address and counts what they send from its start, exactly:
    before, it never counted them until they reconnected, and their disconnection counted every
    message of the connection's life again."""
    devices = [broker.device(f"early-{n}") for n in range(3)]
    for n, device in enumerate(devices):
        send(device, 10 + n)  # before the reader: counted by the one before it, or by none
    counts = Counts()

    async def body() -> None:
        # Connected, from their address, with no connection attempt of theirs: none was seen.
        assert counts.found_open == {f"early-{n}": "127.0.0.1" for n in range(3)}
        send(broker.device("late"), 1)  # one that connects after the start is announced by its event
        for n, device in enumerate(devices):
            send(device, n + 1)
        await counts.until({"early-0": 1, "early-1": 2, "early-2": 3, "late": 1})
        assert counts.connected == ["late"] and "late" not in counts.found_open
        send(devices[0], 4)
        devices[0].close()  # its DISCONNECT event carries the connection's totals: 15
        await counts.until({"early-0": 5, "early-1": 2, "early-2": 3, "late": 1})

    broker.read(counts, body)


class HeldMonitor(httpx.AsyncBaseTransport):
    """The NATS monitoring endpoint, reached for real, whose next /connz answer can be held back
    once it is read: what a slow answer does when a device disconnects meanwhile."""

    def __init__(self) -> None:
        self._real = httpx.AsyncHTTPTransport()
        self.hold = False
        self.held = asyncio.Event()
        self.released = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._real.handle_async_request(request)
        await response.aread()
        if self.hold and request.url.path == "/connz":
            self.hold = False
            self.held.set()
            await self.released.wait()
        return response

    async def aclose(self) -> None:
        await self._real.aclose()


def test_a_connection_that_ends_while_a_poll_is_answered_counts_once(broker: Broker):
    """A /connz page read before a device's DISCONNECT event lists it open: it is not followed again
    from 0 (its whole life counted twice, and followed for ever)."""
    counts, monitor = Counts(), HeldMonitor()
    device = broker.device("leaving")

    async def body() -> None:
        send(device, 5)
        await counts.until({"leaving": 5})
        send(device, 3)
        monitor.hold = True
        await asyncio.wait_for(monitor.held.wait(), 5)  # a page that has it open with 8, held
        device.close()
        await counts.until({"leaving": 8})  # its DISCONNECT: the 3 since the last poll
        monitor.released.set()
        await counts.until({"leaving": 8})

    broker.read(counts, body, monitor_transport=monitor)


def test_after_a_restart_of_the_nats_server_each_device_counts_its_own_messages(broker: Broker):
    """A restarted nats-server numbers its connections again from where it starts: a device's new
    connection may carry the number another's old one had, which must not lend it the other's name
    or counters (before: one device's messages counted for another, or lost, in ~1 run of 4 with 4
    devices)."""
    counts = Counts()
    devices = {f"restarted-{n}": broker.device(f"restarted-{n}") for n in range(10)}

    async def body() -> None:
        for n, device in enumerate(devices.values()):
            send(device, n + 2)
        await counts.until({name: n + 2 for n, name in enumerate(devices)})
        await asyncio.to_thread(broker.server.restart)
        deadline = time.monotonic() + 15
        while not all(device.client.is_connected() for device in devices.values()):  # paho reconnects
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        for n, device in enumerate(devices.values()):
            send(device, 10 * (n + 1))
        await counts.until({name: n + 2 + 10 * (n + 1) for n, name in enumerate(devices)})

    broker.read(counts, body)
