"""Device authentication on the service's broker: passwords, the loopback-only default, the ACL."""

from __future__ import annotations

import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest
from pwdlib import PasswordHash

from tests.support.mqtt import mqtt_denials, stop_network_loop
from tests.support.processes import ServiceProcess


def connect_code(port: int, client_id: str, username: str | None = None, password: str | None = None) -> int:
    codes: list[int] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = lambda c, u, f, reason, p: codes.append(reason.value)
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.time() + 5
    while not codes and time.time() < deadline:
        time.sleep(0.05)
    stop_network_loop(client)
    client.disconnect()
    return codes[0] if codes else -1


@pytest.fixture(scope="module")
def password_service(tmp_path_factory):
    root = tmp_path_factory.mktemp("pw")
    hashed = PasswordHash.recommended().hash("s3cret-hashed")
    (root / "passwords").write_text(f"# devices\nsensor-1:plain-secret\nsensor-2:{hashed}\n")
    svc = ServiceProcess(data_dir=root / "data", extra_args=[
        "--mqtt-auth", "password", "--mqtt-password-file", str(root / "passwords")])
    svc.start()
    yield svc
    svc.stop()


def test_plain_and_argon2_passwords(password_service):
    port = password_service.mqtt_port
    assert connect_code(port, "sensor-1", "sensor-1", "plain-secret") == 0
    assert connect_code(port, "sensor-2", "sensor-2", "s3cret-hashed") == 0


@pytest.mark.parametrize("client_id, username, password, reason", [
    ("sensor-1", "sensor-1", "wrong", "auth_bad_password"),                  # bad password
    ("sensor-1", None, None, "auth_bad_password"),                           # no credentials
    ("sensor-2", "sensor-1", "plain-secret", "auth_client_id_mismatch"),     # someone else's client id
    ("stranger", "stranger", "x", "auth_bad_password"),                      # unknown user
])
def test_refused_connections_are_counted(password_service, client_id, username, password, reason):
    before = mqtt_denials(password_service.endpoint, reason)
    assert connect_code(password_service.mqtt_port, client_id, username, password) != 0
    # The broker reports its events in batches (every 50 ms): the count follows shortly.
    deadline = time.time() + 5
    while mqtt_denials(password_service.endpoint, reason) <= before and time.time() < deadline:
        time.sleep(0.05)
    assert mqtt_denials(password_service.endpoint, reason) == before + 1


def test_no_auth_mode_is_refused_off_loopback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "iotdefender", "serve", "--host", "0.0.0.0", "--api-port", "0",
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--mqtt-auth" in result.stderr and "not loopback" in result.stderr


def test_password_mode_needs_a_password_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "iotdefender", "serve", "--mqtt-auth", "password",
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--mqtt-password-file" in result.stderr


def test_publishing_for_another_thing_disconnects(tmp_path):
    """The default ACL (own): a device reports only under its own thing name, as AWS policies do."""
    import json

    from tests.support.mqtt import Device, report

    svc = ServiceProcess(data_dir=tmp_path, extra_args=["--report-min-interval", "0"])
    svc.start()
    try:
        dev = Device(svc.mqtt_port, "honest-1")
        assert dev.report(report(1, [22]))[0] == "json/accepted"
        dev.publish(json.dumps(report(2, [22])).encode(), thing="someone-else")
        deadline = time.time() + 5
        while not dev.disconnected and time.time() < deadline:
            time.sleep(0.05)
        assert dev.disconnected

        def denied() -> list[str]:
            return [line for line in svc.log_path.read_text().splitlines() if "mqtt_publish_refused" in line]

        # The refusal reaches the service in the broker's next event batch (within ~50 ms).
        while not denied() and time.time() < deadline + 5:
            time.sleep(0.05)
        assert denied() and "someone-else" in denied()[0]
    finally:
        svc.stop()
