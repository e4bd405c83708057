"""One device can never act on another through the default broker (issue #11's MQTT defects).

Real paho clients (and raw MQTT packets where paho refuses to send them) against the default
broker: a Last Will aimed at another thing's reply topic is never delivered, retained messages on
``$aws/`` topics are refused, a second connection with the same client id takes the session over,
and publishing to a wildcard topic closes the connection.
"""

from __future__ import annotations

import json
import queue
import socket
import struct
import time

import paho.mqtt.client as mqtt
import pytest

from tests.support.mqtt import Device, mqtt_denials, report, stop_network_loop
from tests.support.processes import ServiceProcess, wait_until


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = ServiceProcess(data_dir=tmp_path_factory.mktemp("isolation"), extra_args=["--report-min-interval", "0"])
    svc.start()
    yield svc
    svc.stop()


def listener(port: int, client_id: str, topic_filter: str) -> tuple[mqtt.Client, queue.Queue]:
    """A client subscribed (acknowledged) to one filter, collecting what it receives."""
    received: queue.Queue = queue.Queue()
    acked: queue.Queue = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, reconnect_on_failure=False)
    client.on_message = lambda c, u, m: received.put((m.topic, m.payload, m.retain))
    client.on_subscribe = lambda c, u, mid, reasons, p: acked.put([r.value for r in reasons])
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(topic_filter, qos=1)
    assert acked.get(timeout=5) == [1]
    return client, received


def raw_connect(port: int, client_id: str) -> socket.socket:
    """An MQTT 3.1.1 CONNECT on a bare socket, CONNACK read (for packets paho will not send)."""
    name = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(name)) + name
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    return sock


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(1024)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_a_will_on_another_things_reply_topic_is_never_delivered(service):
    port = service.mqtt_port
    forged = "$aws/things/victim/defender/metrics/json/accepted"
    victim, received = listener(port, "victim", "$aws/things/victim/defender/metrics/json/+")
    before = mqtt_denials(service.endpoint, "publish_denied")
    attacker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="attacker", reconnect_on_failure=False)
    attacker.will_set(forged, b'{"thingName":"victim","reportId":1}', qos=1, retain=True)
    attacker.connect("127.0.0.1", port)
    attacker.loop_start()
    time.sleep(0.3)
    stop_network_loop(attacker)
    attacker.socket().close()  # dropped without DISCONNECT: the broker sends the Will if allowed
    assert wait_until(lambda: mqtt_denials(service.endpoint, "publish_denied") > before), "the Will was not checked"
    time.sleep(0.5)
    assert received.empty()
    stop_network_loop(victim)
    victim.disconnect()
    # Nor was it retained: the victim subscribing again gets nothing either.
    again, again_received = listener(port, "victim", "$aws/things/victim/defender/metrics/json/accepted")
    time.sleep(0.5)
    assert again_received.empty()
    stop_network_loop(again)
    again.disconnect()


def test_a_will_where_a_publish_is_allowed_is_delivered(service):
    """The check is the ACL, not a ban on Wills: one on an ordinary topic still arrives."""
    port = service.mqtt_port
    watcher, received = listener(port, "will-watch", "status/will-owner")
    owner = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="will-owner", reconnect_on_failure=False)
    owner.will_set("status/will-owner", b"offline", qos=1)
    owner.connect("127.0.0.1", port)
    owner.loop_start()
    time.sleep(0.3)
    stop_network_loop(owner)
    owner.socket().close()
    assert received.get(timeout=10) == ("status/will-owner", b"offline", False)
    stop_network_loop(watcher)
    watcher.disconnect()


def test_retained_reports_are_refused_and_never_retained(service):
    port = service.mqtt_port
    dev = Device(port, "retainer")
    before = mqtt_denials(service.endpoint, "publish_denied")
    dev.client.publish("$aws/things/retainer/defender/metrics/json", json.dumps(report(1, [22])).encode(),
                       qos=1, retain=True)
    assert wait_until(lambda: dev.disconnected), "a retained $aws/ publish must close the connection"
    assert wait_until(lambda: mqtt_denials(service.endpoint, "publish_denied") == before + 1)  # the next event batch
    with pytest.raises(queue.Empty):
        dev.replies.get(timeout=1)  # not accepted as a report
    dev.close()
    # Ordinary retained messages still work (outside $aws/).
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="retainer-2")
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    publisher.publish("sensors/retainer-2/state", b"on", qos=1, retain=True).wait_for_publish(5)
    reader, received = listener(port, "retainer-3", "sensors/retainer-2/state")
    assert received.get(timeout=5) == ("sensors/retainer-2/state", b"on", True)
    for c in (publisher, reader):
        stop_network_loop(c)
        c.disconnect()


def test_a_second_connection_with_the_same_client_id_takes_the_session_over(service):
    port = service.mqtt_port
    older, older_received = listener(port, "twin", "$aws/things/twin/defender/metrics/json/+")
    gone: queue.Queue = queue.Queue()
    older.on_disconnect = lambda *a: gone.put(True)
    newer = Device(port, "twin")
    assert gone.get(timeout=5), "the older connection must be closed (MQTT session takeover)"
    assert newer.report(report(1, [22]))[0] == "json/accepted"
    time.sleep(0.5)
    assert older_received.empty(), "the older connection received the newer one's reply"
    assert not newer.disconnected
    newer.close()
    stop_network_loop(older)


@pytest.mark.parametrize("topic", [b"sensors/+/temp", b"sensors/#", b"$aws/things/+/defender/metrics/json"])
def test_publishing_to_a_wildcard_topic_closes_the_connection(service, topic):
    sock = raw_connect(service.mqtt_port, f"wildcard-{topic.count(b'/')}-{topic[-1]}")
    body = struct.pack("!H", len(topic)) + topic + b"{}"
    sock.sendall(bytes([0x30, len(body)]) + body)  # PUBLISH, QoS 0
    assert closed_by_peer(sock)
    sock.close()


def test_devices_do_not_receive_reports_through_a_wildcard_reply_filter(service):
    """``.../metrics/+`` is a valid reply filter and also matches the report topic itself: the
    device gets its replies, never a report back."""
    port = service.mqtt_port
    watcher, received = listener(port, "plus-filter", "$aws/things/plus-filter/defender/metrics/+")
    acked: queue.Queue = queue.Queue()
    watcher.on_subscribe = lambda c, u, mid, reasons, p: acked.put(True)
    watcher.subscribe("$aws/things/plus-filter/defender/metrics/json/+", qos=1)
    assert acked.get(timeout=5)
    watcher.publish("$aws/things/plus-filter/defender/metrics/json", json.dumps(report(1, [22])).encode(), qos=1)
    topic, _, _ = received.get(timeout=10)
    assert topic == "$aws/things/plus-filter/defender/metrics/json/accepted"
    time.sleep(0.5)
    assert received.empty(), "the report itself was delivered back to the device"
    stop_network_loop(watcher)
    watcher.disconnect()
