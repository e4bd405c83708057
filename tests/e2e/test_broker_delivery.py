"""The service's broker delivers as MQTT says: exact and wildcard filters, ordinary pub/sub,
unsubscribe, replies only to those subscribed (pinned when amqtt's filter matching was replaced,
kept for the Mosquitto broker and its plugin's delivery check)."""

from __future__ import annotations

import json
import queue
import time

import paho.mqtt.client as mqtt

from tests.support.mqtt import stop_network_loop

SERVICE_ARGS = ["--report-min-interval", "0", "--mqtt-acl", "any"]


class Client:
    def __init__(self, port: int, client_id: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.acks: queue.Queue[int] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, reasons, p: self.acks.put(mid)
        self.client.on_unsubscribe = lambda c, u, mid, reasons, p: self.acks.put(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def subscribe(self, *filters: str) -> None:
        for topic_filter in filters:
            self.client.subscribe(topic_filter, qos=1)
            self.acks.get(timeout=10)

    def unsubscribe(self, topic_filter: str) -> None:
        self.client.unsubscribe(topic_filter)
        self.acks.get(timeout=10)

    def received(self, timeout: float = 5) -> list[str]:
        topics = []
        end = time.time() + timeout
        while time.time() < end:
            try:
                topics.append(self.messages.get(timeout=0.2)[0])
            except queue.Empty:
                if topics:
                    break
        return sorted(topics)

    def close(self) -> None:
        stop_network_loop(self.client)
        self.client.disconnect()


def test_exact_reply_topics_get_replies(service):
    device = Client(service.mqtt_port, "exact-1")
    device.subscribe("$aws/things/exact-1/defender/metrics/json/accepted",
                     "$aws/things/exact-1/defender/metrics/json/rejected")
    document = {"header": {"report_id": 1, "version": "1.0"}, "metrics": {"listening_tcp_ports": {"ports": []}}}
    device.client.publish("$aws/things/exact-1/defender/metrics/json", json.dumps(document), qos=1)
    topic, payload = device.messages.get(timeout=10)
    assert topic == "$aws/things/exact-1/defender/metrics/json/accepted"
    assert json.loads(payload)["reportId"] == 1
    device.close()


def test_ordinary_pub_sub_with_every_kind_of_filter(service):
    listener = Client(service.mqtt_port, "listener-1")
    listener.subscribe("plant/line1/temp", "plant/+/pressure", "alarms/#")
    other = Client(service.mqtt_port, "other-1")
    other.subscribe("plant/line1/temp")
    talker = Client(service.mqtt_port, "talker-1")
    for topic in ("plant/line1/temp", "plant/line2/pressure", "alarms/a/b", "alarms", "plant/line1/humidity"):
        talker.client.publish(topic, b"x", qos=1).wait_for_publish(5)
    assert listener.received() == ["alarms", "alarms/a/b", "plant/line1/temp", "plant/line2/pressure"]
    assert other.received() == ["plant/line1/temp"]
    listener.unsubscribe("alarms/#")
    other.close()  # a gone subscriber is skipped, not an error
    talker.client.publish("alarms/late", b"x", qos=1).wait_for_publish(5)
    talker.client.publish("plant/line1/temp", b"x", qos=1).wait_for_publish(5)
    assert listener.received() == ["plant/line1/temp"]
    for client in (listener, talker):
        client.close()
