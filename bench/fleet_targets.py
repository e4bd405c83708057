"""What the fleet connects to: the service under test, or the bare broker with the bare responder.

Both confine devices to their own topics (the service with ``--mqtt-acl own``, or Mosquitto with
a ``pattern`` ACL on ``%c``, the client id) and both can be restarted on the same port for the
reconnect storm. ``pids`` are the roots of the process trees whose memory is measured (split
into broker and service by bench/process_usage.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


from bench import fleet_workload
from tests.support.processes import Mosquitto, ServiceProcess, wait_for

ROOT = Path(__file__).resolve().parents[1]
SERVICE_USER = "iotdefender"
# Devices (anonymous, identified by client id) read and write only under their own thing; the
# service (or the bare responder) connects as SERVICE_USER and sees every thing's topics.
DEVICE_ACL = (f"user {SERVICE_USER}\ntopic readwrite $aws/things/#\n\n"
              "pattern readwrite $aws/things/%c/#\n")
# As the service's own Mosquitto child is configured (brokers/mosquitto/config.py on the broker
# branch): no log line per connection, 1,000 QoS 1 messages in flight to the service's connection.
BROKER_SETTINGS = "connection_messages false\nmax_inflight_messages 1000\n"


class BareTarget:
    """A separately started Mosquitto (with the device ACL) and bench/bare_responder.py."""

    label = "bare broker + bare responder"

    def __init__(self) -> None:
        self.broker = Mosquitto(acl=DEVICE_ACL, settings=BROKER_SETTINGS)
        self.responder: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return self.broker.port

    def start(self) -> None:
        self.broker.start()
        self._start_responder()

    def _start_responder(self) -> None:
        self.responder = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_responder", "--port", str(self.broker.port), "--username", SERVICE_USER],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.responder.stdout.readline()  # "ready" once subscribed; EOF if it died
        if line.strip() != "ready":
            raise RuntimeError("bare responder did not start")

    def _stop_responder(self) -> None:
        if self.responder and self.responder.poll() is None:
            self.responder.terminate()
            self.responder.wait(10)

    def restart(self) -> None:
        self._stop_responder()
        self.broker.restart()
        self._start_responder()

    def pids(self) -> list[int]:
        return [self.broker.process.pid, self.responder.pid]

    def versions(self) -> dict[str, str]:
        return {"broker": mosquitto_version()}

    def stop(self) -> None:
        self._stop_responder()
        self.broker.stop()


class ServiceTarget:
    """``iotdefender serve`` with its default broker (`embedded`) or joined to a separate Mosquitto."""

    def __init__(self, broker: str, export_topic: str | None = None) -> None:
        self.kind = broker
        self.export_topic = export_topic  # every behavior's metric exported there (fleet_workload.configure)
        self.label = f"service ({broker})"
        self.broker = Mosquitto(acl=DEVICE_ACL, settings=BROKER_SETTINGS) if broker == "mosquitto" else None
        extra = ["--report-min-interval", "0", "--mqtt-acl", "own"]
        if self.broker:
            extra += ["--mqtt-url", f"mqtt://{SERVICE_USER}@127.0.0.1:{self.broker.port}"]
        self.service = ServiceProcess(data_dir=Path(tempfile.mkdtemp(prefix="iotdefender-bench-")), extra_args=extra)

    @property
    def port(self) -> int:
        return self.broker.port if self.broker else self.service.mqtt_port

    def start(self) -> None:
        if self.broker:
            self.broker.start()
        self.service.start()
        fleet_workload.configure(self.service.client(), self.export_topic)
        self._wait_mqtt()

    def _wait_mqtt(self) -> None:
        """/healthz may answer before the device listener does; devices need the listener."""
        import socket

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, 60, "the device MQTT listener")

    def restart(self) -> None:
        if self.broker:
            self.service.stop()
            self.broker.restart()
            self.service.start()
        else:
            self.service.restart()
        self._wait_mqtt()

    def pids(self) -> list[int]:
        return [self.service.process.pid] + ([self.broker.process.pid] if self.broker else [])

    def versions(self) -> dict[str, str]:
        if self.broker:
            return {"broker": mosquitto_version() + " (separate, --mqtt-url)"}
        return {"broker": mosquitto_version() + " (child of the service)"}

    def stop(self) -> None:
        self.service.stop()
        shutil.rmtree(self.service.data_dir, ignore_errors=True)  # its database: tens of MB a run
        if self.broker:
            self.broker.stop()


def mosquitto_version() -> str:
    out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"
