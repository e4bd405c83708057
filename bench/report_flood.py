"""Devices flooding their report topics, and whether the other devices' reports are still answered.

An outside-in test found that a few devices publishing reports as fast as a socket allows cost other
devices their answers: the service's connection to its broker filled faster than the service read
it, Mosquitto dropped whole batches, and honest reports, acknowledged (PUBACK), were never answered
nor counted. This runs that attack against ``iotdefender serve`` (its default broker, ``--time-scale``
60 by default, so each connection may publish 6,000 messages a second):

* ``--flooders`` devices, each one raw MQTT connection (client id = thing name) writing QoS 0
  PUBLISHes of a malformed report (``garbage``: answered InvalidPayload) or of a valid one
  (``valid``: Throttled) on its own report topic, 500 at a time, as fast as the socket takes them,
  for ``--seconds``; with ``--subscribed`` each first subscribes (QoS 1) to its own replies and then
  never reads its socket, so that every answer to it waits in the broker (bounded per client by
  ``max_queued_messages`` and the in-flight limit: config.py);
* meanwhile ``--honest`` devices (paho-mqtt, QoS 1, subscribed to their replies) publish a
  malformed report every ``--every`` seconds, each of which must be answered;
* with ``--stop-service-for S`` the service's process is stopped (SIGSTOP) ``--stop-service-at``
  seconds into the run for S seconds, then continued (SIGCONT): a stalled service (a frozen VM, a
  long pause). Its broker keeps running; every report published meanwhile must still be answered,
  by the service once it resumes or by the broker (``--flooders 0`` for the stall alone).

Printed (and written to bench/results/report-flood-<date>.json): the honest reports sent, PUBACKed,
answered and unanswered 30 s after the flood, their answer times (publish to reply, matched by
reportId; answers matching no report sent are counted, none expected), and the
service's own counts over the run: reports rejected by the service, answered by the broker
(Throttled past the reports a thing may have waiting; docs/mqtt-policy.md), publishes dropped for
the rate, and reports the broker handed over that never reached the service (must be 0); and the
broker's resident memory (Mosquitto's, sampled every half second: the largest, and 30 s after).

    .venv/bin/python bench/report_flood.py [--flooders 10] [--seconds 20] [--kind garbage] [--honest 5]
        [--every 0.25] [--time-scale 60] [--subscribed] [--stop-service-at 5 --stop-service-for 0]
        [--output FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import mqtt_wire  # noqa: E402
from bench.common import environment, report  # noqa: E402
from bench.process_usage import rss_bytes, split  # noqa: E402
from tests.support.metrics import metric_sample  # noqa: E402
from tests.support.processes import ServiceProcess  # noqa: E402

COUNTED = {
    "rejected_by_service": 'iotdefender_reports_total{outcome="rejected"}',
    "accepted": 'iotdefender_reports_total{outcome="accepted"}',
    "answered_by_broker_throttled": 'iotdefender_mqtt_reports_rejected_by_broker_total{code="Throttled"}',
    "answered_by_broker_unavailable": 'iotdefender_mqtt_reports_rejected_by_broker_total{code="ServiceUnavailable"}',
    "answered_by_broker_overloaded": 'iotdefender_mqtt_reports_rejected_by_broker_total{code="ServiceOverloaded"}',
    "publishes_dropped_for_rate": "iotdefender_mqtt_publishes_throttled_total",
    "reports_lost_between_broker_and_service": "iotdefender_broker_reports_lost_total",
    "event_batches_lost": "iotdefender_broker_event_batches_lost_total",
    "service_cpu_seconds": "process_cpu_seconds_total",
}


def flood(port: int, thing: str, payload: bytes, until: float, sent: dict[str, int], subscribed: bool) -> None:
    """One raw connection writing QoS 0 reports as fast as its socket takes them; ``subscribed``: to
    its replies first, which it then never reads."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(mqtt_wire.connect(thing, keepalive=60))
        sock.recv(4)  # CONNACK
        if subscribed:
            sock.sendall(mqtt_wire.subscribe(1, f"$aws/things/{thing}/defender/metrics/json/+", qos=1))
            sock.recv(5)  # SUBACK
        batch = mqtt_wire.publish_qos0(f"$aws/things/{thing}/defender/metrics/json", payload) * 500
        n = 0
        while time.monotonic() < until:
            try:
                sock.sendall(batch)
            except OSError:
                break
            n += 500
        sent[thing] = n


class Honest:
    """A paho device publishing a malformed report every ``every`` seconds and timing each answer,
    matched by its reportId: the service echoes it (the report has a header, no metrics), and so
    does the broker when it answers itself. Paired in order before, an answer lost during a stall
    was credited to the next report, and the stalled reports' answer times read short (12-50 s
    matched by id against a few seconds in order)."""

    def __init__(self, port: int, thing: str) -> None:
        self.thing = thing
        self.sent: dict[int, float] = {}
        self.answered: dict[int, float] = {}
        self.acked = 0
        self._lock = threading.Lock()
        self.unmatched = 0  # answers without a reportId of a report sent (none expected)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=thing)
        self.client.on_message = self._answer
        self.client.on_publish = lambda *a: setattr(self, "acked", self.acked + 1)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"$aws/things/{thing}/defender/metrics/json/rejected", qos=1)
        if not subscribed.wait(10):
            raise RuntimeError(f"{thing}: no SUBACK")

    def _answer(self, client: object, userdata: object, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        try:
            n = json.loads(message.payload).get("reportId", 0) - 1
        except (ValueError, TypeError, AttributeError):
            n = -1
        with self._lock:
            if n in self.sent and n not in self.answered:
                self.answered[n] = now
            else:
                self.unmatched += 1

    def run(self, until: float, every: float) -> None:
        n = 0
        while time.monotonic() < until:
            with self._lock:
                self.sent[n] = time.monotonic()
            report = b'{"header":{"report_id":%d,"version":"1.0"},"honest":%d}' % (n + 1, n)  # no metrics: refused
            self.client.publish(f"$aws/things/{self.thing}/defender/metrics/json", report, qos=1)
            n += 1
            time.sleep(every)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stall(pid: int, at: float, seconds: float) -> None:
    """Stop the service's process ``at`` seconds from now for ``seconds`` (its broker, a child in a
    session of its own, keeps running)."""
    time.sleep(at)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def counted(endpoint: str) -> dict[str, float]:
    return {name: metric_sample(endpoint, sample) for name, sample in COUNTED.items()}


class BrokerMemory:
    """The broker's resident memory, sampled every half second: the largest seen, in MB."""

    def __init__(self, service_pid: int) -> None:
        self._pid = service_pid
        self.largest_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def now_mb(self) -> float:
        return split([self._pid], rss_bytes)["broker"] / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.largest_mb = max(self.largest_mb, self.now_mb())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flooders", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--kind", choices=("garbage", "valid"), default="garbage")
    parser.add_argument("--honest", type=int, default=5)
    parser.add_argument("--every", type=float, default=0.25)
    parser.add_argument("--time-scale", type=float, default=60.0)
    parser.add_argument("--subscribed", action="store_true",
                        help="flooders subscribe to their replies and never read them")
    parser.add_argument("--stop-service-at", type=float, default=5.0)
    parser.add_argument("--stop-service-for", type=float, default=0.0,
                        help="seconds the service's process is stopped (SIGSTOP) during the run; 0: never")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    payload = b"x" * 50 if args.kind == "garbage" else json.dumps(
        {"header": {"report_id": 10**12, "version": "1.0"},
         "metrics": {"listening_tcp_ports": {"ports": [{"port": 443}], "total": 1}}}).encode()
    with tempfile.TemporaryDirectory(prefix="report-flood-") as directory:
        service = ServiceProcess(data_dir=Path(directory), extra_args=["--time-scale", str(args.time_scale)])
        service.start()
        try:
            honest = [Honest(service.mqtt_port, f"honest-{n}") for n in range(args.honest)]
            before = counted(service.endpoint)
            memory = BrokerMemory(service.process.pid)
            memory_before = memory.now_mb()
            until = time.monotonic() + args.seconds
            sent: dict[str, int] = {}
            threads = [threading.Thread(target=flood, args=(service.mqtt_port, f"flooder-{n}", payload, until, sent,
                                                          args.subscribed))
                       for n in range(args.flooders)]
            threads += [threading.Thread(target=device.run, args=(until, args.every)) for device in honest]
            if args.stop_service_for > 0:
                threads.append(threading.Thread(target=stall, args=(service.process.pid, args.stop_service_at,
                                                                   args.stop_service_for)))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            time.sleep(30)
            after = counted(service.endpoint)
            memory.stop()
            memory_after = memory.now_mb()
            for device in honest:
                device.close()
        finally:
            service.stop()
    waits = sorted(device.answered[n] - device.sent[n] for device in honest for n in device.answered)
    sent_honest = sum(len(device.sent) for device in honest)
    answered = sum(len(device.answered) for device in honest)
    result = {
        "benchmark": "report_flood", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "bench/report_flood.py " + " ".join(sys.argv[1:]), "machine": environment(),
        "settings": vars(args) | {"output": str(args.output) if args.output else None},
        "flood": {"devices": args.flooders, "publishes_written": sum(sent.values()), "seconds": args.seconds},
        "honest": {"devices": args.honest, "sent": sent_honest, "pubacked": sum(device.acked for device in honest),
                   "answered": answered, "unanswered_30_s_after": sent_honest - answered,
                   "answers_not_matched": sum(device.unmatched for device in honest),
                   "answer_ms": {"p50": round(1000 * waits[len(waits) // 2], 1) if waits else None,
                                 "p99": round(1000 * waits[int(len(waits) * 0.99)], 1) if waits else None,
                                 "max": round(1000 * waits[-1], 1) if waits else None}},
        "broker_memory_mb": {"before": round(memory_before, 1), "largest": round(memory.largest_mb, 1),
                             "30_s_after": round(memory_after, 1)},
        "service_counted": {name: round(after[name] - before[name], 1) for name in COUNTED},
    }
    report(result, args.output or Path(__file__).with_name("results") / f"report-flood-{datetime.date.today()}.json")


if __name__ == "__main__":
    main()
