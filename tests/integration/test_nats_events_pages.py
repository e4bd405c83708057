"""The message counts of an external NATS broker's devices come from its /connz pages: every open
connection is read, however many pages they take (one request of at most 100,000 left the
connections beyond it uncounted)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from iotdefender.cloud.nats_events import NatsEventReader
from tests.support.mqtt import Device
from tests.support.processes import NatsServer


class Counts:
    """What the reader hands the cloud-side metrics: here, the messages sent per device."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}

    def connect_attempt(self, client_id: str, address: Any, accepted: bool) -> None:
        pass

    def disconnect(self, client_id: str) -> None:
        pass

    def message_counts(self, client_id: str, sent: int, sent_bytes: int, received: int) -> None:
        self.sent[client_id] = self.sent.get(client_id, 0) + sent


def test_every_open_connection_is_counted_across_pages():
    server = NatsServer()
    server.start()
    devices: list[Device] = []
    try:
        counts = Counts()

        async def go() -> None:
            reader = NatsEventReader(f"nats://sys:sys@127.0.0.1:{server.port}", f"http://127.0.0.1:{server.http_port}",
                                     counts, poll_s=0.2, connz_page=2)
            await reader.start()
            await asyncio.sleep(0.5)  # its subscriptions reach the server (the devices below block this loop)
            try:
                for n in range(5):  # three pages of two
                    device = Device(server.mqtt_port, f"paged-{n}", username="dev", password="dev")
                    devices.append(device)
                    for _ in range(n + 3):
                        device.client.publish("telemetry/x", b"y", qos=1).wait_for_publish(5)
                deadline = time.monotonic() + 10
                expected = {f"paged-{n}": n + 3 for n in range(5)}
                while {device: counts.sent.get(device, 0) for device in expected} != expected:
                    assert time.monotonic() < deadline, counts.sent
                    await asyncio.sleep(0.1)
            finally:
                await reader.stop()

        asyncio.run(go())
    finally:
        for device in devices:
            device.close()
        server.stop()
