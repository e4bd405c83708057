"""Persistent MQTT sessions (clean session off) outlive the service and its Mosquitto, as AWS IoT keeps
them for an hour: a device that reconnects finds its subscriptions (it does not subscribe again: AWS
IoT tells devices to do so only when the CONNACK says the session is gone) and the QoS 1 messages
queued for it."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.support.mqtt import stop_network_loop
from tests.support.processes import ServiceProcess, mosquitto_children, wait_for


class PersistentDevice:
    """A paho client with clean_session=False, MQTT 3.1.1."""

    def __init__(self, port: int, client_id: str) -> None:
        self.port = port
        self.thing = client_id
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._connacks: queue.Queue[tuple[bool, int]] = queue.Queue()
        self._subacks: queue.Queue[list[Any]] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, u, flags, rc, p: self._connacks.put((flags.session_present, rc.value))
        self.client.on_subscribe = lambda c, u, mid, reasons, p: self._subacks.put(reasons)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))

    def connect(self) -> bool:
        """Connect; whether the broker had the session."""
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        present, code = self._connacks.get(timeout=10)
        assert code == 0
        return present

    def subscribe(self, topic_filter: str) -> None:
        self.client.subscribe(topic_filter, qos=1)
        assert not any(reason.is_failure for reason in self._subacks.get(timeout=10))

    def report(self, report_id: int) -> None:
        document = {"header": {"report_id": report_id, "version": "1.0"},
                    "metrics": {"listening_tcp_ports": {"ports": [{"port": 443}], "total": 1}}}
        self.client.publish(f"$aws/things/{self.thing}/defender/metrics/json", json.dumps(document),
                            qos=1).wait_for_publish(5)

    def next_message(self, timeout: float = 10) -> tuple[str, Any]:
        topic, payload = self.messages.get(timeout=timeout)
        return topic, json.loads(payload) if topic.startswith("$aws/") else payload

    def close(self) -> None:
        self.client.disconnect()
        stop_network_loop(self.client)


def publish_once(port: int, topic: str, payload: bytes) -> None:
    """A QoS 1 message from another (clean-session) client, acknowledged by the broker."""
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sender-{time.monotonic_ns()}")
    sender.connect("127.0.0.1", port)
    sender.loop_start()
    try:
        sender.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        sender.disconnect()
        stop_network_loop(sender)


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def subscribed_device(service: ServiceProcess, thing: str) -> PersistentDevice:
    """A device with its reply subscription and one on an application topic, answered once, then away."""
    device = PersistentDevice(service.mqtt_port, thing)
    assert device.connect() is False
    device.subscribe(f"$aws/things/{thing}/defender/metrics/json/+")
    device.subscribe(f"{thing}/commands")
    device.report(1)
    topic, reply = device.next_message()
    assert topic.endswith("/json/accepted") and reply["reportId"] == 1
    device.close()
    return device


def resumes(device: PersistentDevice) -> None:
    """The session is there: the message queued while away arrives, and the next report is answered
    without subscribing again."""
    assert device.connect() is True
    assert device.next_message() == (f"{device.thing}/commands", b"reboot")
    device.report(2)
    topic, reply = device.next_message()
    assert topic == f"$aws/things/{device.thing}/defender/metrics/json/accepted" and reply["reportId"] == 2
    device.close()


@pytest.mark.parametrize("stop", ["SIGTERM", "kill -9"])
def test_a_persistent_session_survives_a_restart_of_the_service(tmp_path, stop):
    """SIGTERM stops Mosquitto after the service; kill -9 of the service sends Mosquitto SIGTERM (not
    SIGKILL), and it saves its sessions before it exits and frees the MQTT port."""
    service = ServiceProcess(data_dir=tmp_path, extra_args=["--report-min-interval", "0.5"])
    service.start()
    try:
        device = subscribed_device(service, "camera-1")
        publish_once(service.mqtt_port, "camera-1/commands", b"reboot")  # queued: camera-1 is away
        service.stop() if stop == "SIGTERM" else service.kill9()
        wait_for(lambda: port_free(service.mqtt_port), 10, "the old Mosquitto to exit")
        service.start()  # on the same data directory
        resumes(device)
    finally:
        service.stop()


def test_a_persistent_session_survives_a_crash_of_mosquitto(tmp_path):
    """Mosquitto killed alone (SIGKILL: nothing saved at exit) and restarted by the service: the sessions
    of its last autosave (every 60 s divided by --time-scale) are back."""
    service = ServiceProcess(data_dir=tmp_path, extra_args=["--report-min-interval", "0.5", "--time-scale", "60"])
    service.start()
    try:
        database = tmp_path / "mosquitto" / "mosquitto.db"
        device = subscribed_device(service, "camera-3")
        publish_once(service.mqtt_port, "camera-3/commands", b"reboot")
        queued_at = time.time()
        wait_for(lambda: database.exists() and database.stat().st_mtime > queued_at + 0.1, 10, "an autosave")
        assert service.log_path is not None
        connections = service.log_path.read_text().count("mqtt_client_connected")
        assert service.process is not None
        (broker,) = mosquitto_children(service.process.pid)
        os.kill(broker, signal.SIGKILL)
        wait_for(lambda: service.log_path.read_text().count("mqtt_client_connected") > connections, 15,
                 "the service connected to the restarted Mosquitto")
        resumes(device)
    finally:
        service.stop()


def test_a_restored_session_gets_only_what_the_policy_of_now_allows(tmp_path):
    """A subscription to another thing's replies, taken under --mqtt-acl any, is restored after a restart
    under --mqtt-acl own (the default), but the plugin checks each delivery: none of those replies arrive."""
    service = ServiceProcess(data_dir=tmp_path, extra_args=["--report-min-interval", "0.5", "--mqtt-acl", "any"])
    service.start()
    try:
        watcher = PersistentDevice(service.mqtt_port, "watcher")
        watcher.connect()
        watcher.subscribe("$aws/things/camera-4/defender/metrics/json/+")
        watcher.subscribe("sync")
        watcher.close()
        service.stop()
        service.extra_args = ["--report-min-interval", "0.5"]
        service.start()
        assert watcher.connect() is True
        camera = PersistentDevice(service.mqtt_port, "camera-4")
        camera.connect()
        camera.subscribe("$aws/things/camera-4/defender/metrics/json/+")
        camera.report(1)
        assert camera.next_message()[0].endswith("/json/accepted")
        # Delivered to the watcher after the reply, if the reply was: the watcher's queue is in order.
        publish_once(service.mqtt_port, "sync", b"after the reply")
        assert watcher.next_message() == ("sync", b"after the reply")
        camera.close()
        watcher.close()
    finally:
        service.stop()


def test_an_unreadable_session_file_is_set_aside_and_the_broker_starts_without_it(tmp_path):
    """Mosquitto does not start on a mosquitto.db it cannot read; the service renames the file and
    starts it again, rather than not starting at all."""
    runtime = tmp_path / "mosquitto"
    runtime.mkdir(mode=0o700)
    (runtime / "mosquitto.db").write_bytes(b"\x00" * 64)
    service = ServiceProcess(data_dir=tmp_path, extra_args=["--report-min-interval", "0.5"])
    service.start()
    try:
        assert [p.name.startswith("mosquitto.db.unreadable-") for p in runtime.glob("mosquitto.db.*")] == [True]
        assert service.log_path is not None and "mqtt_sessions_unreadable" in service.log_path.read_text()
        subscribed_device(service, "camera-5")  # the broker works, with a session file of its own again
    finally:
        service.stop()
    assert (runtime / "mosquitto.db").exists()
