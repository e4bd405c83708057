"""A device as the tests see it: a real paho-mqtt client speaking Device Defender's topics."""

from __future__ import annotations

import json
import queue
import uuid
from typing import Any

import cbor2
import paho.mqtt.client as mqtt

from tests.support.metrics import metric_sample


class Device:
    def __init__(self, port: int, client_id: str, thing: str | None = None, **connect: Any) -> None:
        self.thing = thing or client_id
        self.replies: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if connect.get("username"):
            self.client.username_pw_set(connect["username"], connect.get("password"))
        self.client.on_message = self._on_message
        self.disconnected = False
        self.client.on_disconnect = lambda *a: setattr(self, "disconnected", True)
        acknowledged: queue.Queue[int] = queue.Queue()
        self.client.on_subscribe = lambda c, u, mid, reasons, p: acknowledged.put(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        # Both subscriptions are acknowledged before the first report, as AWS's agents wait.
        for encoding in ("json", "cbor"):
            info = self.client.subscribe(f"$aws/things/{self.thing}/defender/metrics/{encoding}/+", qos=1)
            assert info[0] == mqtt.MQTT_ERR_SUCCESS
        for _ in range(2):
            acknowledged.get(timeout=10)

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        encoding, outcome = message.topic.split("/")[-2:]
        body = json.loads(message.payload) if encoding == "json" else cbor2.loads(message.payload)
        self.replies.put((f"{encoding}/{outcome}", body))

    def publish(self, payload: bytes, encoding: str = "json", thing: str | None = None) -> None:
        info = self.client.publish(f"$aws/things/{thing or self.thing}/defender/metrics/{encoding}", payload, qos=1)
        info.wait_for_publish(5)

    def report(self, document: dict[str, Any], encoding: str = "json") -> tuple[str, dict[str, Any]]:
        payload = json.dumps(document).encode() if encoding == "json" else cbor2.dumps(document)
        self.publish(payload, encoding)
        return self.reply()

    def reply(self, timeout: float = 10) -> tuple[str, dict[str, Any]]:
        return self.replies.get(timeout=timeout)

    def close(self) -> None:
        """DISCONNECT first: it wakes the network loop, which then ends at once; stopping the loop
        first waits out its select timeout (about 1 s per device)."""
        self.client.disconnect()
        stop_network_loop(self.client)


def stop_network_loop(client: mqtt.Client) -> None:
    """``client.loop_stop()`` without paho-mqtt 2.2's race (eclipse-paho/paho.mqtt.python#872,
    open): when the network thread ends by itself (after a DISCONNECT, a refusal, a dropped
    connection) between ``loop_stop``'s check of the thread and its ``join``, the thread has just
    set itself to None and ``loop_stop`` raises AttributeError. The thread is over then, which is
    all ``loop_stop`` waits for."""
    try:
        client.loop_stop()
    except AttributeError:
        pass


def report(report_id: int, ports: list[int] | None = None, **blocks: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"header": {"report_id": report_id, "version": "1.0"}, "metrics": {}}
    if ports is not None:
        document["metrics"]["listening_tcp_ports"] = {"ports": [{"port": p} for p in ports], "total": len(ports)}
    for key, value in blocks.items():
        target = document if key == "custom_metrics" else document["metrics"]
        target[key] = value
    return document


def mqtt_denials(endpoint: str, reason: str) -> float:
    """``iotdefender_mqtt_denials_total{reason}`` from the service's ``/metrics``."""
    return metric_sample(endpoint, f'iotdefender_mqtt_denials_total{{reason="{reason}"}}')


class ExportSubscriber:
    """A client of a metrics export topic (alerts/metrics_export.py), as an operator's consumer
    is: every metric it received."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"consumer-{uuid.uuid4().hex[:8]}")
        self.client.on_message = lambda _c, _u, message: self.messages.put(json.loads(message.payload))
        subscribed: queue.Queue[int] = queue.Queue()
        self.client.on_subscribe = lambda c, u, mid, reasons, p: subscribed.put(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        subscribed.get(timeout=10)
        self.metrics: list[dict[str, Any]] = []

    def received(self) -> list[dict[str, Any]]:
        """Every metric of the messages so far, each message checked against the schema's envelope."""
        while True:
            try:
                message = self.messages.get_nowait()
            except queue.Empty:
                return self.metrics
            assert message["version"] == "1.0" and set(message) == {"version", "metrics"}, message
            self.metrics += message["metrics"]

    def close(self) -> None:
        self.client.disconnect()
        stop_network_loop(self.client)
