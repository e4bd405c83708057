"""Devices that connect while the service starts: Mosquitto listens a moment before the service's
own client has subscribed to the reports its plugin hands it. A report published then was
acknowledged (PUBACK) and reached nobody: never stored, never answered (an outside-in trial: 23 of
56,430 reports at restarts; 40 of 40 with devices reconnecting every 5 ms). The plugin now refuses
devices until the service says it is ready, so every acknowledged report is answered."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt

from tests.support.mqtt import report, stop_network_loop
from tests.support.processes import ServiceProcess

DEVICES = 20


class EagerDevice:
    """Connects every 5 ms until the broker takes it, then subscribes to its replies and sends one
    report at once (what a fleet reconnecting to a restarted service does)."""

    def __init__(self, port: int, thing: str, give_up_at: float) -> None:
        self.port, self.thing, self.give_up_at = port, thing, give_up_at
        self.acknowledged = False
        self.answers: list[str] = []
        self._answered = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _connect(self) -> mqtt.Client | None:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.thing)
        result: list[bool] = []
        done = threading.Event()

        def on_connect(c, userdata, flags, reason, properties):  # type: ignore[no-untyped-def]
            result.append(not reason.is_failure)
            done.set()
        client.on_connect = on_connect
        client.on_message = lambda c, u, m: (self.answers.append(m.topic.rsplit("/", 1)[-1]), self._answered.set())
        try:
            client.connect("127.0.0.1", self.port)
        except OSError:
            return None
        client.loop_start()
        if done.wait(2) and result[0]:
            return client
        stop_network_loop(client)
        client.disconnect()
        return None

    def _run(self) -> None:
        client = None
        while client is None and time.monotonic() < self.give_up_at:
            client = self._connect()
            if client is None:
                time.sleep(0.005)
        if client is None:
            return
        client.subscribe(f"$aws/things/{self.thing}/defender/metrics/json/+", qos=1)
        info = client.publish(f"$aws/things/{self.thing}/defender/metrics/json",
                              json.dumps(report(1, [443])).encode(), qos=1)
        info.wait_for_publish(10)
        self.acknowledged = info.is_published()
        self._answered.wait(15)
        client.disconnect()
        stop_network_loop(client)


def test_every_report_acknowledged_while_the_service_starts_is_answered(tmp_path):
    svc = ServiceProcess(data_dir=tmp_path, extra_args=["--report-min-interval", "0"])
    devices = [EagerDevice(svc.mqtt_port, f"eager-{n}", time.monotonic() + 60) for n in range(DEVICES)]
    svc.start()
    try:
        for device in devices:
            device.thread.join(30)
        acknowledged = [d for d in devices if d.acknowledged]
        unanswered = [d.thing for d in acknowledged if not d.answers]
        print(f"start gate: {len(acknowledged)} of {DEVICES} reports acknowledged, unanswered: {unanswered}")
        assert len(acknowledged) == DEVICES
        assert unanswered == []
        assert all(d.answers == ["accepted"] for d in devices)
    finally:
        svc.stop()
