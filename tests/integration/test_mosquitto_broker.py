"""The default broker's adapter against a real Mosquitto and real paho devices: disconnect, refuse
and allow a device (what mitigation needs), reports reaching the sink, and start-up failures told
in one line."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import time

import cbor2
import paho.mqtt.client as mqtt
import pytest
from prometheus_client import REGISTRY

from iotdefender.brokers.gatekeeper import Gatekeeper
from iotdefender.brokers.listeners import ListenerSettings
from iotdefender.brokers.mosquitto import broker as broker_module
from iotdefender.brokers.mosquitto.broker import MosquittoBroker
from iotdefender.ingest.replies import reply_payload
from iotdefender.ingest.report import report_id_hint
from tests.support.broker_harness import (
    ANSWERED_UNAVAILABLE,
    Recorder,
    connect,
    in_thread,
    run_with_broker,
    sample,
)
from tests.support.mqtt import stop_network_loop


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


#: Reports the broker answers itself, and the reportId each answer must echo (None: the report has
#: none to echo). AWS's agents match answers by it and drop the others (reference 4.4).
REPORTS_AND_THEIR_IDS = [
    ("json", b'{"header":{"report_id":1700000000123,"version":"1.0"},"metrics":{}}', 1700000000123),
    ("json", b'{"hed":{"rid":42,"v":"1.0"},"met":{}}', 42),
    ("json", b'{"header":{},"hed":{"rid":7}}', 7),  # an empty header is read as absent, as the service does
    ("json", b'{"n":2}', None),
    ("json", b'{"header":{"report_id":"12"}}', None),  # not an integer
    ("json", b'{"header":{"report_id":5.0}}', None),  # written as a float: not an integer to the service
    ("json", b'{"header":{"report_id":1e3}}', None),
    ("json", b'{"header":{"report_id":3}} x', None),  # not JSON: something after the document
    ("json", b'{"header":{"report_id":1,"report_id":2}}', 2),  # duplicate keys: the last, as a dict keeps
    ("json", b'{"header":{"report_id":1},"header":{"report_id":4}}', 4),
    ("json", b'{"header":{"report_id":9007199254740993},"s":"\\u0000"}', 2**53 + 1),  # exact past a double's 2^53
    ("json", b'{"header":{"report_id":9223372036854775807}}', 2**63 - 1),
    ("json", b'{"header":{"report_id":-9223372036854775808}}', -(2**63)),
    ("cbor", cbor2.dumps({"hed": {"rid": 2**53 + 1}}), 2**53 + 1),
    ("cbor", cbor2.dumps({"hed": {"rid": 2**40 + 7, "v": "1.0"}, "met": {}}), 2**40 + 7),
    ("cbor", cbor2.dumps({"hed": {"rid": 2**64 - 1}}), 2**64 - 1),
    ("cbor", cbor2.dumps({"hed": {"rid": -(2**63)}}), -(2**63)),
    ("cbor", cbor2.dumps({"hed": {"rid": -(2**63) - 1}}), None),  # past what the service echoes (64 bits)
    ("cbor", b"\xd9\xd9\xf7" + cbor2.dumps({"header": {"report_id": 5, "version": "1.0"}}), 5),  # self-described
    ("cbor", b"\xa1\x63hed\xa1\x63rid\xc2\x42\x00\x05", 5),  # a bignum (tag 2) of leading zero and 5
    ("cbor", b"\xa1\x63hed\xa1\x63rid\xc3\x41\x05", -6),  # a negative bignum (tag 3): -1 - 5
    ("cbor", b"\xa1\x63hed\xa1\x63rid\xc2\x49\x01" + bytes(8), None),  # 2^64: past 64 bits
    ("cbor", b"\xa1\x63hed\xa2\x63rid\x01\x63rid\x02", 2),  # duplicate keys: the last
    ("cbor", b"\xa1\x63hed\xa1\x7f\x62ri\x61d\xff\x09", 9),  # a key in chunks (indefinite length)
    ("cbor", b"\xff\x00", None),  # not CBOR
]

#: Ids the service reads and the broker cannot read exactly, so it leaves them out (not another id).
IDS_THE_BROKER_LEAVES_OUT = [("json", b'{"header":{"report_id":9223372036854775808}}')]  # Jansson: 64-bit signed


def service_echo(encoding: str, payload: bytes) -> int | None:
    """The reportId the service's answer to ``payload`` carries (as it answers a rejected report)."""
    answer = reply_payload("cam-1", encoding, report_id_hint(payload, encoding), 0, ("X", "y"))
    return (json.loads(answer) if encoding == "json" else cbor2.loads(answer)).get("reportId")


def test_the_table_of_report_ids_is_what_the_service_echoes():
    """The broker's answers must carry what the service's would: the table above is checked against
    the service's own reading, so it cannot drift from it."""
    assert [service_echo(encoding, payload) for encoding, payload, _ in REPORTS_AND_THEIR_IDS] == \
        [rid for _, _, rid in REPORTS_AND_THEIR_IDS]
    assert all(service_echo(encoding, payload) is not None for encoding, payload in IDS_THE_BROKER_LEAVES_OUT)


def test_reports_while_the_service_reconnects_are_answered_service_unavailable_by_the_broker(tmp_path):
    """Handed to the service's connection while another client held its id, reports reached nobody:
    acknowledged, never answered. The broker now answers them itself, ``rejected`` ServiceUnavailable
    (retryable), with each report's id, counts them, and hands the service none of them."""
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        device, codes, _ = connect(port, "cam-1")
        assert await in_thread(codes.get, True, 5) == 0
        answers: queue.Queue[tuple[str, dict]] = queue.Queue()
        device.on_message = lambda c, u, message: answers.put(
            ("cbor", cbor2.loads(message.payload)) if "/cbor/" in message.topic
            else ("json", json.loads(message.payload)))
        subscribed: queue.Queue[int] = queue.Queue()
        device.on_subscribe = lambda c, u, mid, reasons, p: subscribed.put(mid)
        for encoding in ("json", "cbor"):
            device.subscribe(f"$aws/things/cam-1/defender/metrics/{encoding}/rejected", qos=1)
            await in_thread(subscribed.get, True, 5)
        answered_before = REGISTRY.get_sample_value(*ANSWERED_UNAVAILABLE) or 0.0
        lost_before = sample("iotdefender_broker_reports_lost_total")
        impostor = await take_over_service_connection(broker, port)
        topic = "$aws/things/cam-1/defender/metrics/json"
        sent = REPORTS_AND_THEIR_IDS + [(encoding, payload, None) for encoding, payload in IDS_THE_BROKER_LEAVES_OUT]
        for encoding, payload, _ in sent:
            await in_thread(device.publish(f"$aws/things/cam-1/defender/metrics/{encoding}", payload,
                                           qos=1).wait_for_publish, 5)
        got = [await in_thread(answers.get, True, 5) for _ in sent]
        assert {(a["thingName"], a["status"], a["statusDetails"]["ErrorCode"]) for _, a in got} == \
            {("cam-1", "REJECTED", "ServiceUnavailable")}
        assert sorted((encoding, a.get("reportId", -1)) for encoding, a in got) == \
            sorted((encoding, -1 if rid is None else rid) for encoding, _, rid in sent)
        assert all(list(a)[:2] == ["thingName", "reportId"] for _, a in got if "reportId" in a)  # as the service writes it
        deadline = time.monotonic() + 15
        while not reports:  # one more report now and then, until the service is back
            assert time.monotonic() < deadline, "the service's connection did not come back"
            await in_thread(device.publish(topic, b'{"again":1}', qos=1).wait_for_publish, 5)
            await asyncio.sleep(0.3)
        assert all(payload == b'{"again":1}' for _, _, payload in reports)  # none of the three
        for _ in range(100):
            if (REGISTRY.get_sample_value(*ANSWERED_UNAVAILABLE) or 0.0) - answered_before >= len(sent):
                break
            await asyncio.sleep(0.05)
        assert (REGISTRY.get_sample_value(*ANSWERED_UNAVAILABLE) or 0.0) - answered_before >= len(sent)
        assert sample("iotdefender_broker_reports_lost_total") == lost_before
        for client in (impostor, device):
            stop_network_loop(client)
            client.disconnect()

    run_with_broker(body, tmp_path)


def test_a_report_of_a_thing_name_over_128_bytes_is_not_answered_while_the_service_is_away(tmp_path):
    """The service answers no report of a thing name over 128 bytes (InvalidThingName: AWS allows
    none, and its reply topic is no thing's); the broker answered one ServiceUnavailable while the
    service's connection was away (an outside-in test). Now it counts it, as the service would, and
    answers nothing; a report of a valid name sent after it is answered."""
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        long_name = "d" * 129
        answers: queue.Queue[str] = queue.Queue()
        devices = []
        for name in (long_name, "cam-1"):
            device, codes, _ = connect(port, name)
            assert await in_thread(codes.get, True, 5) == 0
            device.on_message = lambda c, u, message: answers.put(message.topic.split("/")[2])
            subscribed: queue.Queue[int] = queue.Queue()
            device.on_subscribe = lambda c, u, mid, reasons, p: subscribed.put(mid)
            device.subscribe(f"$aws/things/{name}/defender/metrics/json/rejected", qos=1)
            await in_thread(subscribed.get, True, 5)
            devices.append(device)
        invalid = ("iotdefender_mqtt_reports_rejected_by_broker_total", {"code": "InvalidThingName"})
        invalid_before = REGISTRY.get_sample_value(*invalid) or 0.0
        impostor = await take_over_service_connection(broker, port)
        for name, device in zip((long_name, "cam-1"), devices):
            await in_thread(device.publish(f"$aws/things/{name}/defender/metrics/json",
                                           b'{"header":{"report_id":1}}', qos=1).wait_for_publish, 5)
        assert await in_thread(answers.get, True, 5) == "cam-1"
        for _ in range(100):
            if (REGISTRY.get_sample_value(*invalid) or 0.0) > invalid_before:
                break
            await asyncio.sleep(0.05)
        assert (REGISTRY.get_sample_value(*invalid) or 0.0) - invalid_before == 1
        assert answers.empty(), "the report of the long name was answered"
        for client in (impostor, *devices):
            stop_network_loop(client)
            client.disconnect()

    run_with_broker(body, tmp_path)


ID_READ_BYTES_PER_S = 2 * 1024 * 1024  # defender_plugin.c, ID_READ_BYTES_PER_S


def test_the_broker_reads_report_ids_within_a_budget_and_answers_every_report(tmp_path):
    """Reading a report's id costs the broker's one thread per byte (CBOR: 20 ns): a device flooding
    large reports gets answers without the id once a second's budget of bytes is spent, and every
    report is still answered."""
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        device, codes, _ = connect(port, "cam-1")
        assert await in_thread(codes.get, True, 5) == 0
        answers: queue.Queue[dict] = queue.Queue()
        device.on_message = lambda c, u, message: answers.put(json.loads(message.payload))
        subscribed: queue.Queue[int] = queue.Queue()
        device.on_subscribe = lambda c, u, mid, reasons, p: subscribed.put(mid)
        device.subscribe("$aws/things/cam-1/defender/metrics/json/rejected", qos=1)
        await in_thread(subscribed.get, True, 5)
        impostor = await take_over_service_connection(broker, port)
        size = 240 * 1024
        count = 40  # 9.4 MB: more than the budget and what it regains while they are sent
        started = time.monotonic()
        for n in range(count):
            head = b'{"header":{"report_id":%d,"version":"1.0"},"pad":"' % (n + 1)
            payload = head + b"x" * (size - len(head) - 2) + b'"}'
            device.publish("$aws/things/cam-1/defender/metrics/json", payload, qos=1)
        got = [await in_thread(answers.get, True, 20) for _ in range(count)]
        elapsed = time.monotonic() - started
        with_id = [a["reportId"] for a in got if "reportId" in a]
        print(f"{len(with_id)} of {count} answers carried their id; sent and answered in {elapsed:.2f} s")
        assert all(a["statusDetails"]["ErrorCode"] == "ServiceUnavailable" for a in got)
        assert with_id, "no answer carried its report's id"
        assert len(with_id) < count, "every 240 KB report was read for its id: no budget"
        assert len(with_id) * size <= ID_READ_BYTES_PER_S * (1 + elapsed) + size, (len(with_id), elapsed)
        for client in (impostor, device):
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


def test_answers_to_reports_read_before_the_services_connection_broke_reach_the_device_once(tmp_path):
    """The service read a report, then its connection to the broker broke before its answer went:
    the answer went into the broken connection, and the report, stored, was never answered (an
    outside-in test: 131 and 440 of 6,000). Now the reply message is sent again once the service
    is connected again, and reaches the device once; the plugin skips a message it had published."""
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        device, codes, _ = connect(port, "cam-1")
        assert await in_thread(codes.get, True, 5) == 0
        answers: queue.Queue[int] = queue.Queue()
        device.on_message = lambda c, u, message: answers.put(json.loads(message.payload)["reportId"])
        subscribed: queue.Queue[int] = queue.Queue()
        device.on_subscribe = lambda c, u, mid, reasons, p: subscribed.put(mid)
        device.subscribe("$aws/things/cam-1/defender/metrics/json/accepted", qos=1)
        await in_thread(subscribed.get, True, 5)
        topic = "$aws/things/cam-1/defender/metrics/json"

        async def read(report_id: int) -> None:
            await in_thread(device.publish(topic, json.dumps({"header": {"report_id": report_id}}).encode(),
                                           qos=1).wait_for_publish, 5)
            deadline = time.monotonic() + 10
            while len(reports) < report_id:
                assert time.monotonic() < deadline, f"report {report_id} did not reach the service"
                await asyncio.sleep(0.02)

        def answer(report_id: int) -> None:
            broker.publish_now(f"{topic}/accepted", json.dumps({"reportId": report_id}).encode(), qos=1)

        await read(1)
        answer(1)  # delivered as usual
        assert await in_thread(answers.get, True, 5) == 1
        await asyncio.sleep(0.3)  # the plugin's word that it published it (its events, every flush)
        await read(2)
        impostor = await take_over_service_connection(broker, port)
        deadline = time.monotonic() + 10
        while broker._client is not None and broker._client.connected:
            assert time.monotonic() < deadline, "the service's connection did not break"
            await asyncio.sleep(0.02)
        answer(2)  # into the broken connection
        assert await in_thread(answers.get, True, 15) == 2  # sent again once the service is back
        await read(3)
        answer(3)
        assert await in_thread(answers.get, True, 5) == 3
        await asyncio.sleep(0.5)
        assert answers.empty()  # 1 was not sent again (the plugin said it published it), nor 2 twice
        for client in (impostor, device):
            stop_network_loop(client)
            client.disconnect()
    run_with_broker(body, tmp_path)


async def _until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def test_the_plugin_confirms_reply_messages_in_the_head_of_its_report_batches(tmp_path, monkeypatch):
    """The service has at most two reply messages out unconfirmed (frames.REPLY_MESSAGES_IN_FLIGHT),
    so the word must come soon: the head of the next report batch carries the last one published."""
    heads: list = []
    read_head = broker_module.report_batch_head
    monkeypatch.setattr(broker_module, "report_batch_head", lambda batch: heads.append(read_head(batch)) or heads[-1])

    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        device, codes, _ = connect(port, "cam-1")
        assert await in_thread(codes.get, True, 5) == 0
        replies = broker._replies
        assert replies is not None
        broker.publish_now("$aws/things/cam-1/defender/metrics/json/accepted", b"{}")
        await asyncio.sleep(0)  # sent at the end of this iteration
        assert replies.unconfirmed == 1
        await _until(lambda: replies.unconfirmed == 0, 5, "the reply message was never confirmed")
        await in_thread(device.publish("$aws/things/cam-1/defender/metrics/json", b"{}", qos=1).wait_for_publish, 5)
        await _until(lambda: reports, 5, "the report did not reach the service")
        assert [(head.replies_of, head.replies_done) for head in heads] == [(replies.instance, 1)]
        stop_network_loop(device)
        device.disconnect()

    run_with_broker(body, tmp_path)


def test_a_reply_message_sent_again_that_the_plugin_had_published_is_confirmed_again(tmp_path):
    """The plugin's word that it published a message can be lost (in the batch that went to a
    connection that broke); the service then sends the message again, and the plugin, which skips it,
    must say so again: the service sends no more replies until it hears (with no report batch to
    carry the word, it waited forever)."""
    async def body(broker: MosquittoBroker, port: int, recorder: Recorder, reports: list) -> None:
        device, codes, _ = connect(port, "cam-1")
        assert await in_thread(codes.get, True, 5) == 0
        answers: queue.Queue[bytes] = queue.Queue()
        device.on_message = lambda c, u, message: answers.put(message.payload)
        subscribed: queue.Queue[int] = queue.Queue()
        device.on_subscribe = lambda c, u, mid, reasons, p: subscribed.put(mid)
        device.subscribe("$aws/things/cam-1/defender/metrics/json/accepted", qos=1)
        await in_thread(subscribed.get, True, 5)
        replies = broker._replies
        assert replies is not None
        replies.published = lambda of, number: None  # type: ignore[method-assign]  # the word lost
        broker.publish_now("$aws/things/cam-1/defender/metrics/json/accepted", b'{"n":1}')
        assert await in_thread(answers.get, True, 5) == b'{"n":1}'
        await asyncio.sleep(0.3)  # the plugin told it (a P record): not heard
        del replies.published
        assert replies.unconfirmed == 1
        assert replies.send_again() == 1
        await _until(lambda: replies.unconfirmed == 0, 5, "the message the plugin skipped was never confirmed")
        await asyncio.sleep(0.3)
        assert answers.empty()  # skipped: not published twice
        stop_network_loop(device)
        device.disconnect()

    run_with_broker(body, tmp_path)
