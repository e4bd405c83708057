"""The default broker's adapter against a real Mosquitto and real paho devices: disconnect, refuse
and allow a device (what mitigation needs), reports reaching the sink, and start-up failures told
in one line."""

from __future__ import annotations

import asyncio
import queue
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from prometheus_client import REGISTRY

from iotdefender.brokers.gatekeeper import Gatekeeper
from iotdefender.brokers.listeners import ListenerSettings
from iotdefender.brokers.mosquitto.broker import MosquittoBroker
from tests.support.mqtt import stop_network_loop
from tests.support.processes import free_port


class Recorder:
    """Stands in for the cloud-side metrics service: keeps what the broker tells it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.stamps: list[tuple[float | None, float]] = []  # each event's time from the broker, and when told

    def _stamped(self, at: float | None) -> None:
        self.stamps.append((at, time.time()))

    def connect_attempt(self, client_id: str, address: str | None, ok: bool, at: float | None = None) -> None:
        self.events.append(("connect", client_id, str(address), str(ok)))
        self._stamped(at)

    def disconnect(self, client_id: str, at: float | None = None) -> None:
        self.events.append(("disconnect", client_id))
        self._stamped(at)

    def authorization_failure(self, client_id: str, topic: str | None, at: float | None = None) -> None:
        self.events.append(("authorization_failure", client_id, str(topic)))
        self._stamped(at)

    def message_sent(self, client_id: str, topic: str, size: int, at: float | None = None) -> None:
        self.events.append(("sent", client_id, topic, str(size)))
        self._stamped(at)

    def message_received(self, client_id: str, topic: str, at: float | None = None) -> None:
        self.events.append(("received", client_id, topic))
        self._stamped(at)


def connect(port: int, client_id: str) -> tuple[mqtt.Client, queue.Queue[int], queue.Queue[bool]]:
    codes: queue.Queue[int] = queue.Queue()
    gone: queue.Queue[bool] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, reconnect_on_failure=False)
    client.on_connect = lambda c, u, f, reason, p: codes.put(reason.value)
    client.on_disconnect = lambda *a: gone.put(True)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, codes, gone


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def run_with_broker(body: Callable[[MosquittoBroker, int, Recorder, list], Awaitable[None]],
                    tmp_path: Any) -> None:
    async def main() -> None:
        port = free_port()
        recorder = Recorder()
        reports: list = []

        def sink(thing: str, encoding: str, payload: bytes, received: float | None = None) -> None:
            reports.append((thing, encoding, payload))

        gatekeeper = Gatekeeper(observer=recorder)
        broker = MosquittoBroker(ListenerSettings("127.0.0.1", port), gatekeeper, sink, cache_dir=tmp_path / "cache")
        await broker.start()
        try:
            await body(broker, port, recorder, reports)
        finally:
            await broker.stop()

    asyncio.run(main())


def test_reports_reach_the_sink_and_events_the_observer(tmp_path):
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        client, codes, _ = connect(port, "sensor-1")
        assert await in_thread(codes.get, True, 5) == 0
        client.publish("$aws/things/sensor-1/defender/metrics/json", b"{}", qos=1).wait_for_publish(5)
        for _ in range(100):
            if reports and ("sent", "sensor-1", "$aws/things/sensor-1/defender/metrics/json", "2") in recorder.events:
                break
            await asyncio.sleep(0.05)
        assert reports == [("sensor-1", "json", b"{}")]
        assert ("connect", "sensor-1", "127.0.0.1", "True") in recorder.events
        # Every event carries the time the broker saw it (its batch's "T" record), at most when told.
        assert recorder.stamps and all(at is not None and told - 5 < at <= told + 0.002
                                       for at, told in recorder.stamps), recorder.stamps
        stop_network_loop(client)
        client.disconnect()
        for _ in range(100):
            if ("disconnect", "sensor-1") in recorder.events:
                break
            await asyncio.sleep(0.05)
        assert ("disconnect", "sensor-1") in recorder.events

    run_with_broker(body, tmp_path)


def test_disconnect_refuse_and_allow_a_device(tmp_path):
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        first, codes, gone = connect(port, "rogue")
        assert await in_thread(codes.get, True, 5) == 0
        await broker.disconnect("rogue")
        assert await in_thread(gone.get, True, 5)
        stop_network_loop(first)

        second, codes, gone = connect(port, "rogue")
        assert await in_thread(codes.get, True, 5) == 0, "after a disconnect the device may come back"
        await broker.refuse("rogue")
        assert await in_thread(gone.get, True, 5)
        stop_network_loop(second)

        third, codes, _ = connect(port, "rogue")
        assert await in_thread(codes.get, True, 5) == 135, "a refused device is not authorised to connect"
        stop_network_loop(third)
        neighbour, codes, _ = connect(port, "neighbour")
        assert await in_thread(codes.get, True, 5) == 0, "refusing one device leaves the others alone"
        stop_network_loop(neighbour)
        neighbour.disconnect()

        await broker.allow("rogue")
        await asyncio.sleep(0.2)
        fourth, codes, _ = connect(port, "rogue")
        assert await in_thread(codes.get, True, 5) == 0
        stop_network_loop(fourth)
        fourth.disconnect()
        assert ("connect", "rogue", "127.0.0.1", "False") in recorder.events

    run_with_broker(body, tmp_path)


async def _counted(broker: MosquittoBroker, clients: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(broker.connections) == clients:
            return True
        await asyncio.sleep(0.05)
    return len(broker.connections) == clients


async def take_over_service_connection(broker: MosquittoBroker, port: int) -> mqtt.Client:
    """A client logging in with the service's id and secret: the service's connection is closed, and
    the plugin's batches go to this client (which reads none) until the service logs in again."""
    impostor = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=broker.client_id, reconnect_on_failure=False)
    impostor.username_pw_set(broker.client_id, broker._secret)
    taken: queue.Queue[int] = queue.Queue()
    impostor.on_connect = lambda c, u, f, reason, p: taken.put(reason.value)
    impostor.connect("127.0.0.1", port)
    impostor.loop_start()
    assert await in_thread(taken.get, True, 5) == 0
    return impostor


def test_the_connected_count_is_right_again_after_batches_the_service_missed(tmp_path):
    """The service's own connection is taken over (a client logging in with its id and secret) and
    comes back a second later; two devices connect and one disconnects meanwhile, and their event
    batches reach nobody. A count kept from those events stayed at 1 (the device that left, the two
    that came unseen); the plugin's count says 2 as soon as the service is back."""
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        first, codes, _ = connect(port, "cam-1")
        assert await in_thread(codes.get, True, 5) == 0
        assert await _counted(broker, 1)
        impostor = await take_over_service_connection(broker, port)
        second, codes_2, _ = connect(port, "cam-2")
        third, codes_3, _ = connect(port, "cam-3")
        assert await in_thread(codes_2.get, True, 5) == 0 and await in_thread(codes_3.get, True, 5) == 0
        stop_network_loop(first)
        first.disconnect()
        await asyncio.sleep(0.3)  # the batches of those events go to the impostor's session
        assert await _counted(broker, 2, timeout=15), f"counted {len(broker.connections)}"
        for client in (impostor, second, third):
            stop_network_loop(client)
            client.disconnect()

    run_with_broker(body, tmp_path)


def reports_lost() -> float:
    return REGISTRY.get_sample_value("iotdefender_broker_reports_lost_total") or 0.0


def test_reports_handed_over_while_the_service_was_away_are_counted_lost(tmp_path):
    """Reports the plugin hands to the service's connection while another client holds its id reach
    nobody (Mosquitto drops QoS 0 messages it cannot deliver, as it drops them past a full queue):
    their PUBLISHes were acknowledged and they are never answered. The next batch's head says how
    many reports came before it, so the service counts what it missed: every report published, less
    those that reached the sink."""
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        device, codes, _ = connect(port, "cam-1")
        assert await in_thread(codes.get, True, 5) == 0
        topic = "$aws/things/cam-1/defender/metrics/json"
        await in_thread(device.publish(topic, b"{}", qos=1).wait_for_publish, 5)
        for _ in range(100):
            if reports:
                break
            await asyncio.sleep(0.05)
        assert len(reports) == 1
        lost_before = reports_lost()
        impostor = await take_over_service_connection(broker, port)
        published = 1
        for n in range(5):
            await in_thread(device.publish(topic, b'{"n":%d}' % n, qos=1).wait_for_publish, 5)
            published += 1
        deadline = time.monotonic() + 15
        while len(reports) < 2:  # one more report now and then, until the service is back
            assert time.monotonic() < deadline, "the service's connection did not come back"
            await in_thread(device.publish(topic, b'{"again":%d}' % published, qos=1).wait_for_publish, 5)
            published += 1
            await asyncio.sleep(0.3)
        await asyncio.sleep(0.3)
        assert published - len(reports) >= 5
        assert reports_lost() - lost_before == published - len(reports)
        for client in (impostor, device):
            stop_network_loop(client)
            client.disconnect()

    run_with_broker(body, tmp_path)


def test_a_port_in_use_is_one_clear_error(tmp_path):
    async def main() -> None:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]

            def sink(thing: str, encoding: str, payload: bytes, received: float | None = None) -> None:
                pass

            broker = MosquittoBroker(ListenerSettings("127.0.0.1", port), Gatekeeper(), sink,
                                     cache_dir=tmp_path / "cache")
            with pytest.raises(OSError, match=f"port {port} on 127.0.0.1 is already in use"):
                await broker.start()
            await broker.stop()

    asyncio.run(main())


def test_mosquitto_comes_back_if_it_dies_alone_and_still_refuses_who_was_refused(tmp_path):
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        await broker.refuse("rogue")
        process = broker._process
        assert process is not None
        process.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if broker._process is not process and broker._process is not None and broker._process.poll() is None:
                break
            await asyncio.sleep(0.1)
        assert await in_thread(_listening, port, 10), "Mosquitto was not restarted"
        # Devices are refused until the service's client is back and subscribed (its reports would
        # reach nobody before: test_start_gate.py), then taken.
        deadline = time.monotonic() + 15
        code = None
        while time.monotonic() < deadline and code != 0:
            client, codes, _ = connect(port, "after-restart")
            code = await in_thread(codes.get, True, 5)
            stop_network_loop(client)
            client.disconnect()
            if code != 0:
                await asyncio.sleep(0.2)
        assert code == 0
        # The restarted plugin learns the deny list again when the service's client reconnects.
        deadline = time.monotonic() + 15
        code = None
        while time.monotonic() < deadline:
            rogue, codes, _ = connect(port, "rogue")
            code = await in_thread(codes.get, True, 5)
            stop_network_loop(rogue)
            rogue.disconnect()
            if code == 135:
                break
            await asyncio.sleep(0.3)
        assert code == 135

    run_with_broker(body, tmp_path)


def _listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False
