"""Devices' application topics on the service's broker, with and without ``--mqtt-acl-file``.

One paho connection per device, password authentication (username = client id), as an operator
would run it. Without the file, application topics are open to every authenticated device (the
documented default: only the ``$aws`` Device Defender topics are per thing). With Mosquitto's
``pattern readwrite devices/%c/#``, a device can neither read nor write another's topics, a refused
PUBLISH closes its connection and counts as an authorization failure, and the Device Defender
topics, the replies and the cloud-side counts work whatever the file says.
"""

from __future__ import annotations

import datetime as dt
import queue
import ssl
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.support.certificates import Pki
from tests.support.mqtt import Device, mqtt_denials, report, stop_network_loop
from tests.support.processes import ServiceProcess, free_port, wait_until

WINDOW = 2.0
DEVICES = ("dev-a", "dev-b", "dev-c", "dev-d", "dev-e", "dev-f")
PER_THING = "# the usual AWS IoT per-thing policy: devices/<thing>/... is its own\npattern readwrite devices/%c/#\n"


class App:
    """A device's application connection: subscribes to one filter and collects what arrives."""

    def __init__(self, port: int, name: str, topic_filter: str, username: str | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.received: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.disconnected = False
        acked: queue.Queue[list[int]] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, reconnect_on_failure=False)
        self.client.username_pw_set(username or name, f"pw-{name}")
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.on_message = lambda c, u, m: self.received.put((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, reasons, p: acked.put([r.value for r in reasons])
        self.client.on_disconnect = lambda *a: setattr(self, "disconnected", True)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic_filter, qos=1)
        self.granted = acked.get(timeout=5)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def drain(self, settle: float = 0.5) -> list[tuple[str, bytes]]:
        time.sleep(settle)
        out = []
        while not self.received.empty():
            out.append(self.received.get())
        return out

    def close(self) -> None:
        self.client.disconnect()
        stop_network_loop(self.client)


def start_service(root: Path, acl: str | None) -> ServiceProcess:
    root.mkdir(parents=True, exist_ok=True)
    (root / "passwords").write_text("".join(f"{n}:pw-{n}\n" for n in DEVICES))
    args = ["--mqtt-auth", "password", "--mqtt-password-file", str(root / "passwords"),
            "--report-min-interval", "0", "--metrics-window", str(WINDOW)]
    if acl is not None:
        (root / "devices.acl").write_text(acl)
        args += ["--mqtt-acl-file", str(root / "devices.acl")]
    svc = ServiceProcess(data_dir=root / "data", extra_args=args)
    svc.start()
    return svc


@pytest.fixture(scope="module")
def per_thing(tmp_path_factory):
    svc = start_service(tmp_path_factory.mktemp("acl-file"), PER_THING)
    yield svc
    svc.stop()


def device(port: int, name: str) -> Device:
    return Device(port, name, username=name, password=f"pw-{name}")


def test_without_a_file_application_topics_are_open_to_every_device(tmp_path):
    """The default, as documented: only the ``$aws`` topics are per thing."""
    svc = start_service(tmp_path, None)
    try:
        spy = App(svc.mqtt_port, "dev-b", "#")
        sender = App(svc.mqtt_port, "dev-a", "devices/dev-a/#")
        sender.publish("devices/dev-a/auth", b"secret")
        sender.publish("devices/dev-b/inbox", b"hello")
        assert sorted(spy.drain()) == [("devices/dev-a/auth", b"secret"), ("devices/dev-b/inbox", b"hello")]
        assert not sender.disconnected
        for c in (spy, sender):
            c.close()
    finally:
        svc.stop()


def test_a_device_cannot_read_another_devices_topics(per_thing):
    port = per_thing.mqtt_port
    spy = App(port, "dev-b", "#")
    assert spy.granted == [1]  # Mosquitto accepts every SUBSCRIBE; the file filters each delivery
    owner = App(port, "dev-a", "devices/dev-a/#")
    owner.publish("devices/dev-a/auth", b"secret")
    assert owner.drain() == [("devices/dev-a/auth", b"secret")]  # its own topics work
    assert spy.drain(0) == []
    spy.publish("devices/dev-b/state", b"mine")
    assert spy.drain() == [("devices/dev-b/state", b"mine")]  # and so do the spy's
    assert not spy.disconnected and not owner.disconnected
    for c in (spy, owner):
        c.close()


def test_a_device_cannot_publish_to_another_devices_topics(per_thing):
    port = per_thing.mqtt_port
    victim = App(port, "dev-d", "devices/dev-d/#")
    before = mqtt_denials(per_thing.endpoint, "publish_denied")
    intruder = App(port, "dev-c", "devices/dev-c/#")
    intruder.publish("devices/dev-d/inbox", b"do this")  # acknowledged, then the connection closes
    assert wait_until(lambda: intruder.disconnected), "a refused application PUBLISH closes the connection"
    assert wait_until(lambda: mqtt_denials(per_thing.endpoint, "publish_denied") == before + 1)
    assert victim.drain() == []
    assert not victim.disconnected
    victim.close()
    stop_network_loop(intruder.client)


def test_reports_and_replies_work_whatever_the_file_says(per_thing):
    """The file grants nothing under ``$aws``: the plugin keeps deciding those topics."""
    for name in ("dev-a", "dev-b"):
        d = device(per_thing.mqtt_port, name)
        outcome, body = d.report(report(1, [22]))
        assert outcome == "json/accepted" and body["thingName"] == name
        d.close()


def window_count(iot, thing: str, metric: str, start: dt.datetime) -> int:  # type: ignore[no-untyped-def]
    """The metric's count summed over the windows since ``start`` (closed windows only)."""
    values = iot.list_metric_values(thingName=thing, metricName=metric, startTime=start,
                                    endTime=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1))
    return sum(int(v["value"]["count"]) for v in values["metricDatumList"])


def test_cloud_side_counts_follow_what_the_file_allows(per_thing):
    """Messages sent and received are those the file let through: the spy subscribed to ``#``
    receives nothing of the owner's, and its count says so; the refused PUBLISH is an
    authorization failure of the device that sent it."""
    iot = per_thing.client()
    iot.create_security_profile(securityProfileName="app-traffic", behaviors=[
        {"name": "sent", "metric": "aws:num-messages-sent",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 1000}}},
        {"name": "received", "metric": "aws:num-messages-received",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 1000}}},
        {"name": "auth", "metric": "aws:num-authorization-failures",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 1000}}}])
    for name in ("dev-e", "dev-f"):
        iot.create_thing(thingName=name)
    iot.attach_security_profile(securityProfileName="app-traffic",
                                securityProfileTargetArn="arn:aws:iot:us-east-1:123456789012:all/things")
    port = per_thing.mqtt_port
    spy = App(port, "dev-f", "#")
    owner = App(port, "dev-e", "devices/dev-e/#")
    time.sleep(WINDOW - time.time() % WINDOW + 0.1)  # all in one window
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=WINDOW)
    for i in range(5):
        owner.publish(f"devices/dev-e/t{i}", b"x")
    assert len(owner.drain()) == 5
    spy.publish("devices/dev-e/cmd", b"!")  # refused: closes the spy's connection
    assert wait_until(lambda: spy.disconnected)
    # Once the window of the owner's messages is closed, every device's window is.
    assert wait_until(lambda: window_count(iot, "dev-e", "aws:num-messages-sent", start) >= 5, timeout=20)
    assert window_count(iot, "dev-e", "aws:num-messages-sent", start) == 5
    assert window_count(iot, "dev-e", "aws:num-messages-received", start) == 5
    assert window_count(iot, "dev-f", "aws:num-authorization-failures", start) == 1
    assert window_count(iot, "dev-f", "aws:num-messages-received", start) == 0
    assert window_count(iot, "dev-f", "aws:num-messages-sent", start) == 0
    owner.close()
    stop_network_loop(spy.client)


def test_a_deny_all_file_leaves_reports_replies_and_the_service_working(tmp_path):
    """An empty file grants nothing: application topics are closed, Device Defender is not, and
    the service's own connection (reports in, replies out, commands) is untouched."""
    svc = start_service(tmp_path, "# nothing is granted\n")
    try:
        port = svc.mqtt_port
        d = device(port, "dev-a")
        assert d.report(report(1, [22]))[0] == "json/accepted"
        app = App(port, "dev-b", "devices/dev-b/#")
        app.publish("devices/dev-b/state", b"1")
        assert wait_until(lambda: app.disconnected)
        assert app.drain(0) == []
        assert d.report(report(2, [22]))[0] == "json/accepted"  # the report device is still connected
        stop_network_loop(app.client)
        d.close()
    finally:
        svc.stop()


def test_an_unreadable_file_is_refused_at_start(tmp_path):
    result = subprocess.run([sys.executable, "-m", "iotdefender", "serve", "--api-port", "0", "--data-dir",
                             str(tmp_path), "--mqtt-acl-file", str(tmp_path / "missing.acl")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--mqtt-acl-file" in result.stderr, result.stderr


def test_a_malformed_file_stops_the_start_with_mosquittos_reason(tmp_path):
    """Mosquitto parses the file: its complaint, naming the bad line's word, reaches the operator."""
    (tmp_path / "bad.acl").write_text("pattern readwrit devices/%c/#\n")
    result = subprocess.run([sys.executable, "-m", "iotdefender", "serve", "--api-port", "0", "--mqtt-port", "0",
                             "--data-dir", str(tmp_path / "data"), "--mqtt-acl-file", str(tmp_path / "bad.acl")],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 2, result.stderr
    assert 'Invalid topic access type "readwrit"' in result.stderr, result.stderr


def test_under_cert_auth_the_username_is_the_certificates_name(tmp_path):
    """A device cannot borrow another's ``user`` block or ``%u`` by sending its username: under
    ``--mqtt-auth cert`` the username is replaced by the verified certificate name."""
    (tmp_path / "pki").mkdir()
    pki = Pki(tmp_path / "pki", "127.0.0.1")
    (tmp_path / "devices.acl").write_text("pattern readwrite devices/%u/#\nuser ops\ntopic readwrite ops/#\n")
    svc = ServiceProcess(data_dir=tmp_path / "data", extra_args=[
        "--mqtt-auth", "cert", "--mqtt-tls-port", str(tls_port := free_port()), "--mqtt-ca", str(pki.ca_cert),
        "--mqtt-cert", str(pki.server_cert), "--mqtt-key", str(pki.server_key),
        "--mqtt-acl-file", str(tmp_path / "devices.acl")])
    svc.start()
    try:
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(*map(str, pki.issue("dev-a")))
        device = App(tls_port, "dev-a", "#", username="ops", tls=context)  # claims to be "ops"
        device.publish("devices/dev-a/state", b"1")  # %u is dev-a, not ops
        assert device.drain() == [("devices/dev-a/state", b"1")]
        device.publish("ops/command", b"reboot")  # ops's block is not dev-a's
        assert wait_until(lambda: device.disconnected)
        stop_network_loop(device.client)
    finally:
        svc.stop()


def test_a_cluster_broker_node_applies_the_file_and_a_node_with_another_is_refused(jetstream, postgres, tmp_path):
    """Cluster mode builds the same broker: the file applies on a broker node, and a second broker
    node whose file says something else is refused at start (a device moving between nodes must
    find the same policy)."""
    url = postgres.create_database(f"acl{time.time_ns()}")
    (tmp_path / "same.acl").write_text(PER_THING)
    (tmp_path / "other.acl").write_text("pattern readwrite #\n")
    args = ["--cluster-url", jetstream.urls[0], "--report-min-interval", "0"]
    node = ServiceProcess(data_dir=tmp_path / "a", database_url=url,
                          extra_args=[*args, "--mqtt-acl-file", str(tmp_path / "same.acl")])
    node.start()
    try:
        port = node.mqtt_port
        spy = App(port, "dev-b", "#")
        owner = App(port, "dev-a", "devices/dev-a/#")
        owner.publish("devices/dev-a/auth", b"secret")
        assert owner.drain() == [("devices/dev-a/auth", b"secret")]
        assert spy.drain(0) == []
        d = Device(port, "dev-c")
        assert wait_until(lambda: d.report(report(1, [22]))[0] == "json/accepted", timeout=20)
        for c in (spy, owner, d):
            c.close()
        other = ServiceProcess(data_dir=tmp_path / "b", database_url=url,
                               extra_args=[*args, "--mqtt-acl-file", str(tmp_path / "other.acl")])
        with pytest.raises(RuntimeError, match="--mqtt-acl-file is 'sha256:"):
            other.start()
        other.stop()
    finally:
        node.stop()
