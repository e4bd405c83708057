"""The client that joins an external broker, against a real Mosquitto: it can be stopped and
started again (cluster mode starts and stops an external broker's intake as a node takes and
loses the intake lock), and reads reports each time."""

from __future__ import annotations

import asyncio

from iotdefender.brokers.external import ExternalBroker, parse_broker_url
from tests.support.mqtt import Device


def test_stopped_and_started_again_it_reads_reports_again(mosquitto) -> None:
    received: list[tuple[str, str]] = []

    def sink(thing: str, encoding: str, payload: bytes, received_at: float | None = None) -> None:
        received.append((thing, payload.decode()))

    async def go() -> None:
        client = ExternalBroker(parse_broker_url(f"mqtt://127.0.0.1:{mosquitto.port}"), sink)
        device = await asyncio.to_thread(Device, mosquitto.port, "restarted-client")
        for round_ in (1, 2):
            await client.start()
            await asyncio.sleep(0.2)  # its subscriptions are in place
            await asyncio.to_thread(device.publish, f"report {round_}".encode())
            for _ in range(100):
                if len(received) == round_:
                    break
                await asyncio.sleep(0.05)
            await client.stop()
        await asyncio.to_thread(device.publish, b"while stopped")
        await asyncio.sleep(0.3)
        device.close()

    asyncio.run(asyncio.wait_for(go(), 30))
    assert received == [("restarted-client", "report 1"), ("restarted-client", "report 2")]


def test_a_reader_that_hands_over_does_not_take_the_session_back(mosquitto) -> None:
    """Two readers of one persistent session (a cluster's intake moving between broker nodes): the
    new one's connection makes Mosquitto close the old one's; once the old one has handed over, it
    stays disconnected (before, it reconnected within 2 s and took the session back, again and
    again, while it answered the reports it still held)."""
    from iotdefender.brokers.external import INTAKE_CLIENT_ID

    def sink(thing: str, encoding: str, payload: bytes, received_at: float | None = None) -> None:
        return None

    async def go() -> tuple[bool, bool]:
        url = parse_broker_url(f"mqtt://127.0.0.1:{mosquitto.port}")
        old = ExternalBroker(url, sink, client_id=INTAKE_CLIENT_ID, persistent=True)
        new = ExternalBroker(url, sink, client_id=INTAKE_CLIENT_ID, persistent=True)
        await old.start()
        old.hand_over()
        await new.start()
        await asyncio.sleep(4.0)  # two of the old reader's reconnection delays
        connected = old.connected, new.connected
        await new.stop()
        await old.stop()
        return connected

    assert asyncio.run(asyncio.wait_for(go(), 30)) == (False, True)
