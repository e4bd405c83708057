"""What the embedded broker holds, for the service and for devices that do not read: the plugin's
flow control toward the service (defender_plugin.c, "flow") and Mosquitto's per-client bounds
(config.py), against a real Mosquitto and real paho devices."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from typing import Any

import paho.mqtt.client as mqtt
from prometheus_client import REGISTRY

from iotdefender.brokers.mosquitto import config as mosquitto_config
from iotdefender.brokers.mosquitto.broker import MosquittoBroker
from tests.support.broker_harness import ANSWERED_THROTTLED, Recorder, connect, in_thread, run_with_broker
from tests.support.mqtt import stop_network_loop


ANSWERED_OVERLOADED = ("iotdefender_mqtt_reports_rejected_by_broker_total", {"code": "ServiceOverloaded"})
DEVICES, REPORTS_EACH = 6, 25


async def stall_under_big_reports(port: int, reports: list, subscribe: bool = False) -> dict[str, Any]:
    """6 devices publish 25 reports of 120 KB each (18 MB, more than the sockets between the broker
    and the service hold), within the publish rate's burst and the 32 reports a thing may have
    waiting, while the service's event loop reads nothing for 2 s; then one more report, which must
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
    time.sleep(2)  # the service's event loop reads nothing meanwhile
    for info in sent:
        await in_thread(info.wait_for_publish, 5)
    await asyncio.sleep(0.3)
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
    Mosquitto queueing at most 40 messages for a client, a service that reads nothing for 2 s under
    18 MB of reports gets every one. Before,
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
    4 batches unread here: 64 would take the 18 MB of the test before any were held.)"""
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
                received.append(await in_thread(got.get, True, 1.5))
        except queue.Empty:
            pass
        assert set(received) == {100_000}
        assert 30 <= len(received) <= 45, len(received)  # 4 MB of 100 KB messages
        for client in (back, publisher):
            stop_network_loop(client)
            client.disconnect()

    run_with_broker(body, tmp_path)
