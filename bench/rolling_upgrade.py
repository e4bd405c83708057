"""A rolling upgrade under load: three cluster nodes of one version replaced one by one by another.

Starts a nats-server with JetStream and PostgreSQL in temporary directories, three ``serve`` nodes
(every role) running the *old* source tree, attaches a profile, and runs a fleet of real MQTT
devices (tests/support/fleet.py: one paho-mqtt connection each, subscribed to their replies, one
report in flight, retryable answers and silence resent with the same report id) through node A and
node B. Then each node in turn — C, A, B — is stopped (SIGTERM) and started again from the *new*
source tree on the same ports; the devices of a node being replaced move to another node meanwhile
and come back after (what a load balancer does). At the end every device's reports are counted
(answers accepted, rejected by code, none) and the accepted report ids compared with what
ListMetricValues returns (tests/support/fleet.audit); every warning and error of the nodes' logs is
counted by event, per step.

    .venv/bin/python bench/rolling_upgrade.py --old-src /path/to/old/src --new-src /path/to/new/src
        [--devices 20] [--interval 1] [--settle 15] [--bounce-new] [--keep] [--metrics-window S]

Each node runs ``python -m iotdefender`` with ``PYTHONPATH`` set to its tree, so the two versions
must be importable from their ``src`` directories (a ``git worktree`` of each commit).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.cluster_demo import owned  # noqa: E402
from tests.support.fleet import RETRYABLE, Fleet, audit, per_device, prepare  # noqa: E402
from tests.support.jetstream import SingleJetStream  # noqa: E402
from tests.support.processes import PostgresCluster, ServiceProcess, wait_for  # noqa: E402

PARTITIONS = 64


def log_lines(node: ServiceProcess, since: int) -> list[dict[str, Any]]:
    assert node.log_path is not None
    lines = node.log_path.read_text().splitlines()[since:]
    found = []
    for line in lines:
        try:
            found.append(json.loads(line) if line.startswith("{") else {"event": line[:160], "level": "raw"})
        except ValueError:
            found.append({"event": line[:160], "level": "raw"})
    return found


def log_length(node: ServiceProcess) -> int:
    assert node.log_path is not None
    return len(node.log_path.read_text().splitlines()) if node.log_path.exists() else 0


def troubles(node: ServiceProcess, since: int) -> Counter[str]:
    """Warnings, errors and raw (non-JSON: tracebacks) lines of the node's log since line ``since``,
    counted by event (with the exception's first words for errors)."""
    found: Counter[str] = Counter()
    for line in log_lines(node, since):
        level = line.get("level", "")
        if level in ("warning", "error", "critical", "exception", "raw"):
            detail = str(line.get("error") or line.get("exception") or "")[:120]
            found[f"{level} {line.get('event')}" + (f" [{detail.splitlines()[0] if detail else ''}]"
                                                     if detail else "")] += 1
    return found


def outcomes(fleets: list[Fleet]) -> Counter[str]:
    total: Counter[str] = Counter()
    for f in fleets:
        total.update(f.book.outcomes())
    return total


def move(fleet: Fleet, port: int) -> None:
    fleet.pause()
    fleet.connect(port)
    fleet.start()


def node(root: Path, name: str, url: str, common: list[str], src: str,
         ports: tuple[int, int] | None = None) -> ServiceProcess:
    svc = ServiceProcess(data_dir=root / name, database_url=url, extra_args=common)
    svc.env = {**svc.env, "PYTHONPATH": src}
    if ports is not None:
        svc.port, svc.mqtt_port = ports
    return svc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-src", required=True)
    parser.add_argument("--new-src", required=True)
    parser.add_argument("--devices", type=int, default=20, help="devices in all, half through A, half through B")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between an answer and the next report")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds of load before and after each step")
    parser.add_argument("--bounce-new", action="store_true",
                        help="restart node C once more (new to new) while A and B still run the old version")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' logs (their directory is printed)")
    parser.add_argument("--metrics-window", type=float, default=None,
                        help="the nodes' --metrics-window in seconds (cloud-side windows closing during the run)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="iotdefender-rolling-"))
    nats, postgres = SingleJetStream(), PostgresCluster()
    nodes: dict[str, ServiceProcess] = {}
    fleets: list[Fleet] = []
    report: dict[str, Any] = {"steps": []}
    try:
        nats.start()
        postgres.start()
        url = postgres.create_database("iotd")
        common = ["--cluster-url", nats.urls[0], "--report-min-interval", "0", "--log-format", "json",
                  *(["--metrics-window", str(args.metrics_window)] if args.metrics_window else [])]
        for name in ("a", "b", "c"):
            nodes[name] = node(root, name, url, common, args.old_src)
            nodes[name].start()
        print(f"three nodes of {args.old_src} ready; logs in {root}", flush=True)
        wait_for(lambda: sum(owned(n) for n in nodes.values()) == PARTITIONS, 60, "64 partitions owned")
        iot = prepare(nodes["a"].client())
        half = args.devices // 2
        fleet_a = Fleet(nodes["a"].mqtt_port, [f"ru-a-{i:02d}" for i in range(half)], args.interval)
        fleet_b = Fleet(nodes["b"].mqtt_port, [f"ru-b-{i:02d}" for i in range(args.devices - half)], args.interval)
        fleets = [fleet_a, fleet_b]
        homes = {"a": fleet_a, "b": fleet_b}
        began = time.monotonic()
        for fleet in fleets:
            fleet.start()
        time.sleep(args.settle)
        print(f"[{time.monotonic() - began:5.1f}s] before: {dict(outcomes(fleets))}", flush=True)

        order = [("c", "a")] + ([("c", "a")] if args.bounce_new else []) + [("a", "b"), ("b", "a")]
        for name, other in order:
            old = nodes[name]
            marks = {n: log_length(svc) for n, svc in nodes.items()}
            before_outcomes = outcomes(fleets)
            before = per_device(fleets)
            fleet = homes.get(name)
            if fleet is not None:
                move(fleet, nodes[other].mqtt_port)
            stopping = time.monotonic()
            old.stop()
            stopped = time.monotonic()
            new = node(root, name, url, common, args.new_src, (old.port, old.mqtt_port))
            new.data_dir = root / f"{name}-new{sum(1 for s in report['steps'] if s['node'] == name.upper())}"
            nodes[name] = new
            step: dict[str, Any] = {"node": name.upper(), "stop_s": round(stopped - stopping, 1)}
            try:
                new.start()
                step["start_to_ready_s"] = round(time.monotonic() - stopped, 1)
            except (RuntimeError, TimeoutError) as error:
                step["start_failed"] = str(error)[-1500:]
            if fleet is not None and new.process is not None and new.process.poll() is None:
                move(fleet, new.mqtt_port)
            t0 = time.monotonic()
            try:
                wait_for(lambda: sum(owned(n) for n in nodes.values()) == PARTITIONS, 30, "64 owned")
                step["all_owned_after_s"] = round(time.monotonic() - t0, 1)
            except TimeoutError:
                step["all_owned_after_s"] = None
            step["owned"] = {n.upper(): owned(svc) for n, svc in nodes.items()}
            time.sleep(args.settle)
            after = per_device(fleets)
            step["devices_without_accepted_since_step"] = sorted(t for t in after if after[t] == before[t])
            step["answers_during_step"] = dict(outcomes(fleets) - before_outcomes)
            step["log_troubles"] = {n.upper(): dict(troubles(svc, marks[n] if svc is not new else 0))
                                    for n, svc in nodes.items()}
            step["old_node_troubles_while_stopping"] = dict(troubles(old, marks[name]))
            report["steps"].append(step)
            print(f"[{time.monotonic() - began:5.1f}s] step {json.dumps(step, indent=1)}", flush=True)

        before = per_device(fleets)
        try:
            wait_for(lambda: all(per_device(fleets)[t] >= before[t] + 3 for t in before), 30,
                     "every device accepted 3 more")
            report["every_device_accepted_after_upgrade"] = True
        except TimeoutError:
            report["every_device_accepted_after_upgrade"] = False
        for fleet in fleets:
            fleet.drain()
        per_thing: dict[str, dict[str, int]] = {}
        for fleet in fleets:
            for (thing, _), answers in fleet.book.answers.items():
                tally = per_thing.setdefault(thing, Counter())
                tally.update(answers)
            for key in fleet.book.sent:
                if not fleet.book.answers.get(key):
                    per_thing.setdefault(key[0], Counter())["none"] += 1
        report["answers"] = dict(outcomes(fleets))
        report["unanswered_resends"] = sum(f.book.unanswered for f in fleets)
        report["not_final"] = sum(1 for f in fleets for k in f.book.sent
                                  if not f.book.answers.get(k) or f.book.answers[k][-1] in RETRYABLE)
        report["per_device"] = {t: dict(c) for t, c in sorted(per_thing.items())}
        report["audit"] = [audit(iot, f) for f in fleets]
        report["duration_s"] = round(time.monotonic() - began, 1)
        print(json.dumps(report, indent=1), flush=True)
        return 0
    finally:
        for fleet in fleets:
            fleet.pause()
            fleet.close()
        for svc in nodes.values():
            svc.stop()
        postgres.stop()
        nats.stop()
        if not args.keep:
            import shutil
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
