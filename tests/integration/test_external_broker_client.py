"""The client that joins an external broker, against a real Mosquitto: it can be stopped and
started again (cluster mode starts and stops an external broker's intake as a node takes and
loses the intake lock), and reads reports each time."""

from __future__ import annotations

import asyncio

from iotdefender.brokers.external import ExternalBroker, parse_broker_url
from tests.support.mqtt import Device, stop_network_loop


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
    from iotdefender.settings import Settings

    def sink(thing: str, encoding: str, payload: bytes, received_at: float | None = None) -> None:
        return None

    async def go() -> tuple[bool, bool]:
        url = parse_broker_url(f"mqtt://127.0.0.1:{mosquitto.port}")
        old = ExternalBroker(url, sink, client_id=Settings().mqtt_client_id, persistent=True)
        new = ExternalBroker(url, sink, client_id=Settings().mqtt_client_id, persistent=True)
        await old.start()
        old.hand_over()
        await new.start()
        await asyncio.sleep(4.0)  # two of the old reader's reconnection delays
        connected = old.connected, new.connected
        await new.stop()
        await old.stop()
        return connected

    assert asyncio.run(asyncio.wait_for(go(), 30)) == (False, True)


def test_answers_to_a_sessions_backlog_are_sent_once(mosquitto) -> None:
    """A persistent session's backlog arrives right after the connection; answers published at once
    (a rejection needs no database) were sent twice: gmqtt replays its unacknowledged QoS 1
    messages in a task scheduled at CONNACK, which ran after those answers were queued (an
    operator's trial: every Throttled rejection of a restart's backlog reached the device twice)."""
    import queue

    import paho.mqtt.client as paho

    from iotdefender.settings import Settings

    holder: list[ExternalBroker] = []

    def sink(thing: str, encoding: str, payload: bytes, received_at: float | None = None) -> None:
        holder[0].publish_now(f"$aws/things/{thing}/defender/metrics/{encoding}/rejected", payload, qos=1)

    answers: queue.Queue[bytes] = queue.Queue()
    listener = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="backlog-listener")
    listener.on_message = lambda client, userdata, message: answers.put(message.payload)
    listener.connect("127.0.0.1", mosquitto.port)
    listener.subscribe("$aws/things/backlog-device/defender/metrics/json/rejected", qos=1)
    listener.loop_start()

    async def go() -> None:
        url = parse_broker_url(f"mqtt://127.0.0.1:{mosquitto.port}")
        reader = ExternalBroker(url, sink, client_id=f"{Settings().mqtt_client_id}-backlog", persistent=True)
        holder.append(reader)
        await reader.start()
        await reader.stop()
        device = await asyncio.to_thread(Device, mosquitto.port, "backlog-device")
        for n in range(10):
            await asyncio.to_thread(device.publish, b'{"queued": %d}' % n)
        reader = ExternalBroker(url, sink, client_id=f"{Settings().mqtt_client_id}-backlog", persistent=True)
        holder[0] = reader
        await reader.start()
        await asyncio.sleep(2.0)
        await reader.stop()
        device.close()

    try:
        asyncio.run(asyncio.wait_for(go(), 30))
    finally:
        stop_network_loop(listener)
        listener.disconnect()
    got = []
    while not answers.empty():
        got.append(answers.get().decode())
    assert sorted(got) == sorted('{"queued": %d}' % n for n in range(10))
