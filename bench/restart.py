"""The service's own restart, phase by phase, for one or more source trees taken in turn.

What bench/pipeline.py's reconnect storm calls the service's restart (``restart_took_s``) is the
time from SIGTERM to the process's exit, then from the new process's start until ``/healthz``
answers and the device listener accepts a connection; the fleet storms meanwhile. This runs only
that, several times, alternating the trees given (``--tree new=src --tree old=../old/src``: each
runs with ``PYTHONPATH=<its src>``), on one fleet that stays connected throughout:

* every tree has its own data directory (SQLite), configured once like the pipeline's (3
  profiles x 10 behaviors, one of them over ``durationSeconds`` 300, so a start refills windows);
* the trees share the API and MQTT ports, one service runs at a time, and the fleet
  (bench/fleet.py, the pipeline's devices: one connection each, clean sessions) reconnects to
  whichever it is;
* a round, for each tree in turn: switch to that tree's service (stop the other, start it; not
  timed as a restart), let every device send ``--report-seconds`` x ``--rate`` reports (stored,
  so the tree's last 300 s hold reports as the pipeline's restart finds them), then restart it
  and time it: SIGTERM -> exit -> /healthz -> listener, and the storm until every device is back.

``--tls``: every device connects with its own certificate (ECDSA P-256, signed by a CA made for
the run) over mutual TLS, the service runs ``--mqtt-auth cert`` on a TLS listener, and the storm is
one TLS handshake a device in Mosquitto's one thread before its CONNECT is even read.

Phases come from the service's own log lines (their wall-clock times, against the moment SIGTERM
was sent): ``stopping``, ``cloud_windows_kept``, ``stopped``, then ``storage`` (imports, the
database opened and migrated), ``detection_loaded`` (the worker's refill, with its own seconds),
``detection_worker``, ``cloud_windows_resumed``, ``mqtt_client_connected`` (Mosquitto started,
the service's client connected and subscribed), ``mosquitto_started``, ``ready``. The 1-minute
load average is recorded with every restart: the machine is shared.

    .venv/bin/python bench/restart.py --devices 5000 --rounds 5 --tree new=src --tree old=../old/src \
        [--tls] --output FILE

Results and what they say: bench/README.md ("The service's own restart"),
bench/results/restart-2026-12-01.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import fleet_workload  # noqa: E402
from bench.certificates import make_pki  # noqa: E402
from bench.common import bounded, environment, report  # noqa: E402
from bench.fleet import Fleet  # noqa: E402
from tests.support.processes import ServiceProcess, free_port, wait_for  # noqa: E402

STOP_EVENTS = ("stopping", "cloud_windows_kept", "stopped")
START_EVENTS = ("storage", "detection_loaded", "detection_worker", "cloud_windows_resumed", "mqtt_client_connected",
                "mosquitto_started", "ready")
REPORT_IDS = 3_000_000_000


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def log_events(path: Path, offset: int) -> dict[str, dict[str, Any]]:
    """The first line of each event written after ``offset``, with its time as epoch seconds."""
    found: dict[str, dict[str, Any]] = {}
    with path.open("rb") as f:
        f.seek(offset)
        for raw in f:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            event = line.get("event")
            if event in STOP_EVENTS + START_EVENTS and event not in found:
                line["at"] = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
                found[event] = line
    return found


class Tree:
    def __init__(self, label: str, src: Path, api_port: int, mqtt_port: int, device_port: int,
                 pki: Path | None = None) -> None:
        """``device_port``: the port devices connect to (``mqtt_port``, or the TLS listener's with ``pki``)."""
        self.label, self.src = label, src.resolve()
        extra = ["--report-min-interval", "0", "--mqtt-acl", "own"]
        if pki is not None:
            extra += ["--mqtt-auth", "cert", "--mqtt-tls-port", str(device_port), "--mqtt-ca", str(pki / "ca.pem"),
                      "--mqtt-cert", str(pki / "server.pem"), "--mqtt-key", str(pki / "server.key")]
        self.device_port = device_port
        self.service = ServiceProcess(data_dir=Path(tempfile.mkdtemp(prefix=f"iotdefender-restart-{label}-")),
                                      extra_args=extra, port=api_port, mqtt_port=mqtt_port)
        self.service.env = {**self.service.env, "PYTHONPATH": str(self.src)}

    def start(self) -> None:
        self.service.start()
        wait_for(lambda: listening(self.device_port), 60, "the device listener")

    def restart(self) -> dict[str, Any]:
        """SIGTERM, exit, start, /healthz, listener: each moment, and the log's phases in between."""
        assert self.service.process is not None and self.service.log_path is not None
        offset = self.service.log_path.stat().st_size
        wall, began = time.time(), time.monotonic()
        self.service.stop()
        exited = time.monotonic()
        self.service.start()
        healthy = time.monotonic()
        wait_for(lambda: listening(self.device_port), 60, "the device listener")
        up = time.monotonic()
        events = log_events(self.service.log_path, offset)
        phases = {name: round(line["at"] - wall, 3) for name, line in events.items()}
        loaded = events.get("detection_loaded", {})
        resumed = events.get("cloud_windows_resumed", {})
        return {"restart_s": round(up - began, 3), "stop_s": round(exited - began, 3),
                "start_to_healthz_s": round(healthy - exited, 3), "healthz_to_listener_s": round(up - healthy, 3),
                "log_s_after_sigterm": phases,
                "refill": {k: loaded.get(k) for k in ("alarm_states", "windows_of_things", "seconds")},
                "cloud_windows_resumed": resumed.get("devices"),
                "began_monotonic": began, "up_monotonic": up}

    def remove(self) -> None:
        self.service.stop()
        shutil.rmtree(self.service.data_dir, ignore_errors=True)


def run(args: argparse.Namespace, pki: Path | None) -> dict[str, Any]:
    api_port, mqtt_port = free_port(), free_port()
    device_port = free_port() if pki is not None else mqtt_port
    trees = [Tree(label, Path(src), api_port, mqtt_port, device_port, pki)
             for label, src in (t.split("=", 1) for t in args.tree)]
    fleet: Fleet | None = None
    samples: list[dict[str, Any]] = []
    current: Tree | None = None
    try:
        for tree in trees:  # configure each data directory once (and build each tree's plugin)
            tree.start()
            fleet_workload.configure(tree.service.client())
            tree.service.stop()
        for round_no in range(args.rounds):
            order = trees if round_no % 2 == 0 else trees[::-1]  # A B, B A, ...: neither always first
            for tree in order:
                switched = current is not None and current is not tree
                if current is not None and switched:
                    if fleet:
                        fleet.arm_storm()
                    current.service.stop()
                if current is not tree:
                    tree.start()
                    current = tree
                if fleet is None and args.devices:
                    fleet = Fleet("127.0.0.1", device_port, args.devices, fleet_workload.report_template(),
                                  per_process=args.per_process,
                                  tls=(str(pki / "ca.pem"), str(pki)) if pki is not None else None)
                    connect = fleet.connect(120)
                    if connect["connected"] != args.devices:
                        raise RuntimeError(f"fleet did not connect: {connect}")
                elif fleet and switched:
                    fleet.wait_storm(time.monotonic(), time.monotonic(), 60)  # back after the switch
                reports = None
                if fleet:
                    reports = fleet.open_loop(args.rate, args.report_seconds,
                                              REPORT_IDS + round_no * 10_000_000 * len(trees), 10)
                    fleet.arm_storm()
                load = os.getloadavg()
                sample = tree.restart()
                storm = (fleet.wait_storm(sample["began_monotonic"], sample["up_monotonic"], 60) if fleet else None)
                del sample["began_monotonic"], sample["up_monotonic"]
                sample = {"tree": tree.label, "round": round_no, "load_1_5_15": [round(x, 2) for x in load],
                          **sample,
                          "reports_before": {k: reports[k] for k in ("sent", "answered", "lost", "p99_ms")}
                          if reports else None,
                          "storm": {k: storm[k] for k in ("all_back_after_restart_s", "all_back_after_service_up_s",
                                                          "connect_attempts", "refused_connacks")} if storm else None}
                samples.append(sample)
                print(json.dumps({k: sample[k] for k in ("tree", "round", "load_1_5_15", "restart_s", "stop_s",
                                                         "start_to_healthz_s", "log_s_after_sigterm")}),
                      file=sys.stderr, flush=True)
    finally:
        if fleet:
            fleet.close()
        for tree in trees:
            tree.remove()
    return {"benchmark": "restart", "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": environment(), "devices": args.devices, "tls": pki is not None, "rate": args.rate,
            "report_seconds": args.report_seconds, "trees": {t.label: str(t.src) for t in trees},
            "summary": summary(samples), "samples": samples,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per tree: each figure's median and every value in the order measured."""
    out: dict[str, Any] = {}
    for label in dict.fromkeys(s["tree"] for s in samples):
        mine = [s for s in samples if s["tree"] == label]
        figures = {key: [s[key] for s in mine] for key in ("restart_s", "stop_s", "start_to_healthz_s")}
        for event in STOP_EVENTS + START_EVENTS:
            values = [s["log_s_after_sigterm"].get(event) for s in mine]
            if all(v is not None for v in values):
                figures[f"log:{event}"] = values
        for key in ("all_back_after_restart_s", "all_back_after_service_up_s", "refused_connacks"):
            values = [s["storm"][key] for s in mine if s["storm"] and s["storm"][key] is not None]
            if values and len(values) == len(mine):
                figures[f"storm:{key}"] = values
        out[label] = {key: {"median": round(statistics.median(v), 3), "all": v} for key, v in figures.items()}
        out[label]["load_1min"] = [s["load_1_5_15"][0] for s in mine]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, help="label=path of a src directory (repeat)")
    parser.add_argument("--devices", type=int, default=5000, help="0: no fleet, the service alone")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rate", type=float, default=5000.0, help="reports/s over the fleet before each restart")
    parser.add_argument("--report-seconds", type=float, default=4.0)
    parser.add_argument("--per-process", type=int, default=4000)
    parser.add_argument("--tls", action="store_true", help="mutual TLS, a certificate per device")
    parser.add_argument("--max-seconds", type=int, default=1500)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    bounded(args.max_seconds)
    with tempfile.TemporaryDirectory(prefix="iotdefender-bench-restart-pki-") as scratch:
        pki = None
        if args.tls:
            pki = Path(scratch)
            make_pki(pki, args.devices)
        report(run(args, pki), args.output, hidden=("machine", "command", "samples"))


if __name__ == "__main__":
    main()
