"""The service's Mosquitto as a process: it dies with the service, even on ``kill -9``, and a busy
MQTT port is one clear line, not a traceback or a hang."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import ServiceProcess, free_port, mosquitto_children
from tests.support import plain_http


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_mosquitto_dies_with_the_service_on_kill_9(tmp_path):
    svc = ServiceProcess(data_dir=tmp_path)
    svc.start()
    try:
        assert svc.process is not None
        brokers = mosquitto_children(svc.process.pid)
        assert len(brokers) == 1
        # Its configuration (which holds the service's secret) lives in the data directory, 0700:
        # a killed service leaves nothing behind elsewhere, and the next start rewrites it.
        runtime = tmp_path / "mosquitto"
        assert (runtime / "mosquitto.conf").exists() and runtime.stat().st_mode & 0o777 == 0o700
        assert f"{runtime}/mosquitto.conf" in Path(f"/proc/{brokers[0]}/cmdline").read_bytes().decode()
    finally:
        svc.kill9()
    deadline = time.time() + 5
    while alive(brokers[0]) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(brokers[0]), "Mosquitto outlived the service"


@pytest.mark.parametrize("busy", ["mqtt", "api"])
def test_a_busy_port_is_one_clear_line(tmp_path, busy):
    """The API port used to fail after `ready` was logged, with a 59-line traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"mqtt": free_port(), "api": free_port(), busy: port}
        env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDEFENDER_")}
        result = subprocess.run(
            [sys.executable, "-m", "iotdefender", "serve", "--data-dir", str(tmp_path), "--api-port",
             str(ports["api"]), "--mqtt-port", str(ports["mqtt"])], env=env, capture_output=True, text=True,
            timeout=60)
    assert result.returncode == 2
    expected = {"mqtt": f"iotdefender: error: MQTT: cannot start (port {port} on 127.0.0.1 is already in use)",
                "api": f"iotdefender: error: --api-port: port {port} on 127.0.0.1 is already in use"}
    assert expected[busy] in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout and '"ready"' not in result.stderr


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stop_signal_stops_everything_cleanly(tmp_path, how):
    """Ctrl-C in a terminal signals the whole foreground process group: the service, its detection
    worker and Mosquitto. `docker stop`, Kubernetes and systemd send SIGTERM to the service's
    process. Either way the service's own shutdown runs to its end ("stopped" logged), every child
    ends, with exit code 0 and no traceback (Ctrl-C once printed a CancelledError traceback; SIGTERM
    ended the process before its shutdown ran: exit code -15)."""
    import httpx

    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDEFENDER_")}
    serve = subprocess.Popen([sys.executable, "-m", "iotdefender", "serve", "--data-dir", str(tmp_path),
                              "--api-port", str(api_port), "--mqtt-port", str(free_port())],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if plain_http.get(f"http://127.0.0.1:{api_port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        brokers = mosquitto_children(serve.pid)
        assert brokers, "the service runs Mosquitto"
        if how == "ctrl-c":
            os.killpg(serve.pid, signal.SIGINT)  # to the group, as a terminal's Ctrl-C
        else:
            serve.send_signal(signal.SIGTERM)  # to the service only, as `docker stop`
        out, err = serve.communicate(timeout=30)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, 9)
    assert serve.returncode == 0, err[-2000:]
    assert "Traceback" not in out + err
    assert "stopped" in err, err[-2000:]
    time.sleep(0.5)
    assert not any(alive(pid) for pid in brokers)


def test_the_default_relative_data_directory_starts_the_broker(tmp_path):
    """`make run` starts `iotdefender serve` with the default --data-dir, ./data: Mosquitto, which
    runs in its runtime directory, was handed a relative config path and refused to start."""
    import httpx
    import paho.mqtt.client as mqtt

    api_port, mqtt_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDEFENDER_")}
    serve = subprocess.Popen([sys.executable, "-m", "iotdefender", "serve", "--api-port", str(api_port),
                              "--mqtt-port", str(mqtt_port)], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        healthy = False
        while time.monotonic() < deadline and serve.poll() is None and not healthy:
            try:
                healthy = plain_http.get(f"http://127.0.0.1:{api_port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.2)
        assert healthy, serve.stdout.read()[-3000:] if serve.poll() is not None else "no /healthz within 60 s"
        assert (tmp_path / "data" / "mosquitto").is_dir()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="relative-1")
        assert client.connect("127.0.0.1", mqtt_port) == 0  # the broker listens
        client.disconnect()
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, 2)
            serve.wait(timeout=30)
