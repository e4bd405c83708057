"""A fleet connects at once to the service's default broker, and every device gets its reply.

3,000 real paho-mqtt clients, one connection each (client id = thing name), all opened before
any is served, each subscribing at QoS 1 to its own ``.../json/+`` and publishing one report as
soon as its subscription is granted, with ``make run``'s defaults (the ``own`` ACL). paho runs
them without a thread each, through its external-loop API (``loop_read``/``loop_write``/
``loop_misc``) over one selector. Issue #12: the embedded broker used to collapse here.
"""

from __future__ import annotations

import json
import selectors
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
import pytest

from tests.support.mqtt import report
from tests.support.processes import ServiceProcess

DEVICES = 3000
# From the first connection to the last reply. Mosquitto accepts ~5,700 connections/s here and the
# service answers ~5,000 reports/s, so this leaves a wide margin; amqtt 0.12 (the embedded broker
# until issue #12) took 27 s to accept the 3,000 connections and 63 s in all.
DEADLINE_S = 30


@dataclass
class Outcome:
    thing: str
    report_id: int
    connack: int | None = None
    granted: bool | None = None
    replies: list[tuple[str, dict]] = field(default_factory=list)


def _on_connect(client, outcome: Outcome, flags, reason, properties) -> None:  # type: ignore[no-untyped-def]
    outcome.connack = reason.value
    if not reason.is_failure:
        client.subscribe(f"$aws/things/{outcome.thing}/defender/metrics/json/+", qos=1)


def _on_subscribe(client, outcome: Outcome, mid, reasons, properties) -> None:  # type: ignore[no-untyped-def]
    outcome.granted = not reasons[0].is_failure
    if outcome.granted:
        document = report(outcome.report_id, ports=[22, 443])
        client.publish(f"$aws/things/{outcome.thing}/defender/metrics/json", json.dumps(document), qos=1)


def _on_message(client, outcome: Outcome, message) -> None:  # type: ignore[no-untyped-def]
    outcome.replies.append((message.topic, json.loads(message.payload)))


def _device(port: int, n: int) -> tuple[mqtt.Client, Outcome]:
    outcome = Outcome(thing=f"fleet{n}", report_id=1_000 + n)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=outcome.thing, userdata=outcome)
    client.on_connect, client.on_subscribe, client.on_message = _on_connect, _on_subscribe, _on_message
    client.connect("127.0.0.1", port, keepalive=600)
    return client, outcome


@pytest.mark.timeout(120)
def test_every_device_of_a_fleet_connecting_at_once_gets_its_reply(tmp_path) -> None:
    service = ServiceProcess(data_dir=tmp_path)
    service.start()
    clients: list[mqtt.Client] = []
    try:
        deadline = time.monotonic() + DEADLINE_S
        devices = []
        for n in range(DEVICES):
            devices.append(_device(service.mqtt_port, n))
            clients.append(devices[-1][0])
            assert time.monotonic() < deadline, f"only {n + 1} of {DEVICES} TCP connections in {DEADLINE_S} s"
        selector = selectors.DefaultSelector()
        for client in clients:
            selector.register(client.socket(), selectors.EVENT_READ, client)
        answered = lambda: sum(1 for _, o in devices if o.replies)  # noqa: E731
        next_misc = 0.0
        while answered() < DEVICES and time.monotonic() < deadline:
            for key, _ in selector.select(0.05):
                key.data.loop_read()
            for client in clients:
                if client.want_write():
                    client.loop_write()
            if time.monotonic() > next_misc:
                for client in clients:
                    client.loop_misc()
                next_misc = time.monotonic() + 1

        refused = [o.thing for _, o in devices if o.connack != 0]
        not_granted = [o.thing for _, o in devices if o.connack == 0 and not o.granted]
        unanswered = [o.thing for _, o in devices if o.granted and not o.replies]
        assert (refused, not_granted, unanswered) == ([], [], []), (
            f"{len(refused)} not connected, {len(not_granted)} not subscribed, {len(unanswered)} without a reply "
            f"after {DEADLINE_S} s (first: {(refused + not_granted + unanswered)[:3]})")
        for _, outcome in devices:
            (topic, body), = outcome.replies
            assert topic == f"$aws/things/{outcome.thing}/defender/metrics/json/accepted"
            assert (body["thingName"], body["reportId"], body["status"]) == (outcome.thing, outcome.report_id,
                                                                             "ACCEPTED")
    finally:
        for client in clients:
            try:
                client.disconnect()
            except Exception:  # noqa: BLE001 - a socket already gone must not hide the assertion
                pass
        service.stop()
