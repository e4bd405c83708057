"""The default broker's adapter against a real Mosquitto and real paho devices: disconnect, refuse
and allow a device (what mitigation needs), reports reaching the sink, and start-up failures told
in one line."""

from __future__ import annotations

import asyncio
import json
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
from iotdefender.brokers.mosquitto import config as mosquitto_config
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
                    tmp_path: Any, answer: bool = False) -> None:
    """``answer``: every report is answered ``accepted`` as the service answers (the broker hands a
    thing's reports over only while fewer than config.REPORTS_AWAITING_ANSWER wait for theirs)."""
    async def main() -> None:
        port = free_port()
        recorder = Recorder()
        reports: list = []
        built: list[MosquittoBroker] = []

        def sink(thing: str, encoding: str, payload: bytes, received: float | None = None) -> None:
            reports.append((thing, encoding, payload))
            if answer:
                built[0].publish_now(f"$aws/things/{thing}/defender/metrics/{encoding}/accepted", b"{}")

        gatekeeper = Gatekeeper(observer=recorder)
        broker = MosquittoBroker(ListenerSettings("127.0.0.1", port), gatekeeper, sink, cache_dir=tmp_path / "cache")
        built.append(broker)
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


def test_while_the_service_reconnects_devices_wait_and_the_events_are_held(tmp_path):
    """The service's own connection is taken over (a client logging in with its id and secret) and
    comes back a second later. Meanwhile a device's CONNECT is refused (as before the service's first
    "ready") and a connected device's disconnection is held, not sent to a connection that is gone:
    the service gets it once back, and counts 1 device connected."""
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        first, codes, _ = connect(port, "cam-1")
        second, codes_2, _ = connect(port, "cam-2")
        assert await in_thread(codes.get, True, 5) == 0 and await in_thread(codes_2.get, True, 5) == 0
        assert await _counted(broker, 2)
        impostor = await take_over_service_connection(broker, port)
        third, codes_3, _ = connect(port, "cam-3")
        assert await in_thread(codes_3.get, True, 5) != 0, "a device connected while the service was away"
        stop_network_loop(third)
        stop_network_loop(first)
        first.disconnect()
        assert await _counted(broker, 1, timeout=15), f"counted {len(broker.connections)}"
        for _ in range(100):
            if ("disconnect", "cam-1") in recorder.events:
                break
            await asyncio.sleep(0.05)
        assert ("disconnect", "cam-1") in recorder.events
        for client in (impostor, second):
            stop_network_loop(client)
            client.disconnect()

    run_with_broker(body, tmp_path)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


ANSWERED_UNAVAILABLE = ("iotdefender_mqtt_reports_rejected_by_broker_total", {"code": "ServiceUnavailable"})
ANSWERED_THROTTLED = ("iotdefender_mqtt_reports_rejected_by_broker_total", {"code": "Throttled"})


def test_reports_while_the_service_reconnects_are_answered_service_unavailable_by_the_broker(tmp_path):
    """Handed to the service's connection while another client held its id, reports reached nobody:
    acknowledged, never answered. The broker now answers them itself, ``rejected`` ServiceUnavailable
    (retryable), counts them, and hands the service none of them."""
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        device, codes, _ = connect(port, "cam-1")
        assert await in_thread(codes.get, True, 5) == 0
        answers: queue.Queue[dict] = queue.Queue()
        device.on_message = lambda c, u, message: answers.put(json.loads(message.payload))
        subscribed: queue.Queue[int] = queue.Queue()
        device.on_subscribe = lambda c, u, mid, reasons, p: subscribed.put(mid)
        device.subscribe("$aws/things/cam-1/defender/metrics/json/rejected", qos=1)
        await in_thread(subscribed.get, True, 5)
        answered_before = REGISTRY.get_sample_value(*ANSWERED_UNAVAILABLE) or 0.0
        lost_before = sample("iotdefender_broker_reports_lost_total")
        impostor = await take_over_service_connection(broker, port)
        topic = "$aws/things/cam-1/defender/metrics/json"
        for n in range(3):
            await in_thread(device.publish(topic, b'{"n":%d}' % n, qos=1).wait_for_publish, 5)
        got = [await in_thread(answers.get, True, 5) for _ in range(3)]
        assert {(a["thingName"], a["status"], a["statusDetails"]["ErrorCode"]) for a in got} == \
            {("cam-1", "REJECTED", "ServiceUnavailable")}
        deadline = time.monotonic() + 15
        while not reports:  # one more report now and then, until the service is back
            assert time.monotonic() < deadline, "the service's connection did not come back"
            await in_thread(device.publish(topic, b'{"again":1}', qos=1).wait_for_publish, 5)
            await asyncio.sleep(0.3)
        assert all(payload == b'{"again":1}' for _, _, payload in reports)  # none of the three
        for _ in range(100):
            if (REGISTRY.get_sample_value(*ANSWERED_UNAVAILABLE) or 0.0) - answered_before >= 3:
                break
            await asyncio.sleep(0.05)
        assert (REGISTRY.get_sample_value(*ANSWERED_UNAVAILABLE) or 0.0) - answered_before >= 3
        assert sample("iotdefender_broker_reports_lost_total") == lost_before
        for client in (impostor, device):
            stop_network_loop(client)
            client.disconnect()

    run_with_broker(body, tmp_path)


ANSWERED_OVERLOADED = ("iotdefender_mqtt_reports_rejected_by_broker_total", {"code": "ServiceOverloaded"})
DEVICES, REPORTS_EACH = 8, 30


async def stall_under_big_reports(port: int, reports: list, subscribe: bool = False) -> dict[str, Any]:
    """8 devices publish 30 reports of 120 KB each (29 MB, more than the sockets between the broker
    and the service hold), within the publish rate's burst and the 32 reports a thing may have
    waiting, while the service's event loop reads nothing for 3 s; then one more report, which must
    reach the sink. What each counter moved by, and the answers the first device got
    (``subscribe``: to its ``rejected`` topic)."""
    devices, answers = [], queue.Queue()
    for n in range(DEVICES):
        device, codes, _ = connect(port, f"cam-{n}")
        assert await in_thread(codes.get, True, 5) == 0
        devices.append(device)
    if subscribe:
        subscribed: queue.Queue[int] = queue.Queue()
        devices[0].on_subscribe = lambda c, u, mid, reasons, p: subscribed.put(mid)
        devices[0].on_message = lambda c, u, message: answers.put(json.loads(message.payload))
        devices[0].subscribe("$aws/things/cam-0/defender/metrics/json/rejected", qos=1)
        await in_thread(subscribed.get, True, 5)
    counters = {"lost": ("iotdefender_broker_reports_lost_total", {}), "throttled": ANSWERED_THROTTLED,
                "overloaded": ANSWERED_OVERLOADED}
    before = {name: REGISTRY.get_sample_value(*sample) or 0.0 for name, sample in counters.items()}
    big = b'{"pad":"' + b"x" * 120_000 + b'"}'
    sent = [device.publish(f"$aws/things/cam-{n}/defender/metrics/json", big, qos=0)
            for _ in range(REPORTS_EACH) for n, device in enumerate(devices)]
    time.sleep(3)  # the service's event loop reads nothing meanwhile
    for info in sent:
        await in_thread(info.wait_for_publish, 5)
    await asyncio.sleep(1)
    await in_thread(devices[0].publish("$aws/things/cam-0/defender/metrics/json", b'{"last":1}',
                                       qos=1).wait_for_publish, 5)
    for _ in range(200):
        if reports and reports[-1][2] == b'{"last":1}':
            break
        await asyncio.sleep(0.05)
    assert reports[-1][2] == b'{"last":1}'
    await asyncio.sleep(0.3)  # the last event batch, with the broker's counts
    moved = {name: (REGISTRY.get_sample_value(*sample) or 0.0) - before[name] for name, sample in counters.items()}
    for device in devices:
        stop_network_loop(device)
        device.disconnect()
    got = []
    while not answers.empty():
        got.append(answers.get())
    return moved | {"published": DEVICES * REPORTS_EACH + 1, "reached": len(reports), "answers": got}


def test_report_batches_the_broker_drops_are_counted_lost(tmp_path, monkeypatch):
    """What Mosquitto queues for a client is bounded (``max_queued_messages``; here 2, below the
    batches the plugin may have unread); what it drops for the service's connection is counted: the
    next batch's head tells the service how many reports it never got (every report handed over,
    less those that reached the sink)."""
    monkeypatch.setattr(mosquitto_config, "QUEUED_MESSAGES", 2)

    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        moved = await stall_under_big_reports(port, reports)
        handed_over = moved["published"] - moved["throttled"] - moved["overloaded"]
        assert moved["lost"] > 0, "nothing was dropped: the test did not overflow the service's queue"
        assert moved["lost"] == handed_over - moved["reached"], moved

    run_with_broker(body, tmp_path, answer=True)


def test_a_service_that_pauses_loses_no_report_though_the_broker_queues_few_messages(tmp_path, monkeypatch):
    """The plugin sends the service at most ``BATCHES_IN_FLIGHT`` (here 16) report batches and as
    many event batches it has not read (defender_plugin.c, "flow"), and holds the rest: with
    Mosquitto queueing at most 40 messages for a client, a service that reads nothing for 3 s under
    29 MB of reports gets every one. Before,
    the plugin sent a batch per pass of Mosquitto's loop and the service's connection needed
    100,000 queued messages, and so did every device (one that never read its answers had that many
    queued)."""
    monkeypatch.setattr(mosquitto_config, "BATCHES_IN_FLIGHT", 16)
    monkeypatch.setattr(mosquitto_config, "QUEUED_MESSAGES", 40)

    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        moved = await stall_under_big_reports(port, reports)
        assert moved["lost"] == 0 and moved["overloaded"] == 0, moved
        assert moved["reached"] == moved["published"] - moved["throttled"], moved

    run_with_broker(body, tmp_path, answer=True)


def test_reports_past_what_the_broker_holds_for_a_slow_service_are_answered_service_overloaded(tmp_path, monkeypatch):
    """Held back for a service that reads slower than they come, past ``REPORTS_HELD_BYTES`` (here
    2 MB) reports would only wait longer: the broker answers them ``rejected`` ServiceOverloaded
    (retryable, as the service answers past its own queue) and counts them; none is lost. (At most
    4 batches unread here: 64 would take the 29 MB of the test before any were held.)"""
    monkeypatch.setattr(mosquitto_config, "BATCHES_IN_FLIGHT", 4)
    monkeypatch.setattr(mosquitto_config, "REPORTS_HELD_BYTES", 2 * 1024 * 1024)

    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        moved = await stall_under_big_reports(port, reports, subscribe=True)
        assert moved["lost"] == 0 and moved["overloaded"] > 0, moved
        assert moved["reached"] + moved["throttled"] + moved["overloaded"] == moved["published"], moved
        codes = {(a["thingName"], a["status"], a["statusDetails"]["ErrorCode"]) for a in moved["answers"]}
        assert ("cam-0", "REJECTED", "ServiceOverloaded") in codes, codes

    run_with_broker(body, tmp_path, answer=True)


def test_an_offline_session_holds_at_most_a_few_megabytes_of_messages(tmp_path):
    """Mosquitto holds at most ``QUEUED_BYTES`` (4 MB) of QoS 1 messages for a client, as well as at
    most ``QUEUED_MESSAGES``: an outside-in test had one offline session subscribed to ``#`` hold
    1,000 application messages of 100 KB (Mosquitto 8 -> 104 MB). Here 100 such messages published
    while the session is away: it gets about 40 when it comes back, not all 100."""
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        got: queue.Queue[int] = queue.Queue()

        def session() -> mqtt.Client:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="listener", clean_session=False)
            client.on_message = lambda c, u, message: got.put(len(message.payload))
            return client

        listener, connected = session(), queue.Queue()
        listener.on_connect = lambda c, u, f, reason, p: connected.put(reason.value)
        listener.connect("127.0.0.1", port)
        listener.loop_start()
        assert await in_thread(connected.get, True, 5) == 0
        subscribed: queue.Queue[int] = queue.Queue()
        listener.on_subscribe = lambda c, u, mid, reasons, p: subscribed.put(mid)
        listener.subscribe("apps/#", qos=1)
        await in_thread(subscribed.get, True, 5)
        stop_network_loop(listener)
        listener.disconnect()
        publisher, codes, _ = connect(port, "publisher")
        assert await in_thread(codes.get, True, 5) == 0
        for n in range(100):
            await in_thread(publisher.publish(f"apps/{n}", b"x" * 100_000, qos=1).wait_for_publish, 5)
        back = session()
        back.connect("127.0.0.1", port)
        back.loop_start()
        received = []
        try:
            while True:
                received.append(await in_thread(got.get, True, 3))
        except queue.Empty:
            pass
        assert set(received) == {100_000}
        assert 30 <= len(received) <= 45, len(received)  # 4 MB of 100 KB messages
        for client in (back, publisher):
            stop_network_loop(client)
            client.disconnect()

    run_with_broker(body, tmp_path)


def test_a_connection_holds_at_most_50_topic_filters(tmp_path):
    """AWS IoT Core refuses a connection's subscriptions past 50; one connection held 100,000 here
    (an outside-in test), each in Mosquitto's tree. The 51st filter is refused (SUBACK failure) and
    counted, not as an authorization failure; subscribing again to a filter held, or after an
    UNSUBSCRIBE, is not refused; a clean session starts with none, and so does an MQTT 5 session
    that ended (the filters the plugin followed outlived it and locked the device out)."""
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        refused_before = sample("iotdefender_mqtt_subscriptions_refused_total")
        device, codes, _ = connect(port, "cam-1")
        assert await in_thread(codes.get, True, 5) == 0
        granted: queue.Queue[list[int]] = queue.Queue()
        device.on_subscribe = lambda c, u, mid, reasons, p: granted.put([r.value for r in reasons])

        async def subscribe(*filters: str) -> list[int]:
            device.subscribe([(f, 1) for f in filters])
            return await in_thread(granted.get, True, 5)

        for start in range(0, 48, 8):  # AWS takes 8 filters a SUBSCRIBE
            assert await subscribe(*(f"cmd/cam-1/{n}" for n in range(start, start + 8))) == [1] * 8
        assert await subscribe("$aws/things/cam-1/defender/metrics/json/+", "cmd/cam-1/48") == [1, 1]  # 50
        assert await subscribe("cmd/cam-1/50", "cmd/cam-1/0") == [0x80, 1]  # the 51st; one held already
        unsubscribed: queue.Queue[int] = queue.Queue()
        device.on_unsubscribe = lambda c, u, mid, reasons, p: unsubscribed.put(mid)
        device.unsubscribe("cmd/cam-1/7")
        await in_thread(unsubscribed.get, True, 5)
        assert await subscribe("cmd/cam-1/50") == [1]
        for _ in range(100):
            if sample("iotdefender_mqtt_subscriptions_refused_total") - refused_before >= 1:
                break
            await asyncio.sleep(0.05)
        assert sample("iotdefender_mqtt_subscriptions_refused_total") - refused_before == 1
        assert not any(event[0] == "authorization_failure" for event in recorder.events)
        stop_network_loop(device)
        device.disconnect()
        again, codes, _ = connect(port, "cam-1")  # a clean session: its filters are gone
        assert await in_thread(codes.get, True, 5) == 0
        device = again
        device.on_subscribe = lambda c, u, mid, reasons, p: granted.put([r.value for r in reasons])
        assert await subscribe(*(f"cmd/cam-1/new-{n}" for n in range(8))) == [1] * 8
        stop_network_loop(device)
        device.disconnect()
        # MQTT 5, clean start off, session expiry 0: the session ends with the connection.
        for round_ in range(2):
            v5 = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam-5", protocol=mqtt.MQTTv5)
            connected: queue.Queue[int] = queue.Queue()
            v5.on_connect = lambda c, u, f, reason, p: connected.put(reason.value)
            v5.on_subscribe = lambda c, u, mid, reasons, p: granted.put([r.value for r in reasons])
            v5.connect("127.0.0.1", port, clean_start=False)
            v5.loop_start()
            assert await in_thread(connected.get, True, 5) == 0
            device = v5
            for start in range(0, 48 if round_ == 0 else 8, 8):
                assert await subscribe(*(f"v5/{round_}/{n}" for n in range(start, start + 8))) == [1] * 8
            v5.disconnect()
            stop_network_loop(v5)

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
