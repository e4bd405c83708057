"""Detect mitigation benchmark: how fast a task quarantines a fleet's violating devices, and what it
costs the rest of the service while it runs.

A real ``iotdefender serve`` (SQLite, or PostgreSQL with ``--database postgresql``); ``--things``
registered things in a fleet group watched by a profile that each device's report violates; the
fleet of ``bench/fleet.py`` (one MQTT connection per device, each subscribed to its own replies,
spread over processes) reports once, so every device has a violation. Then ``--actions``
ADD_THINGS_TO_THING_GROUP actions (one quarantine group each) are applied by one Detect mitigation
task on the profile's violations: things × actions executions.

Measured, in one run, the same probes without a task (baseline) and while the task runs:
- CreateThing latency (a signed API write every 0.25 s, as an operator's script would do),
- report → accepted latency of the fleet reporting at ``--rate`` reports/s,
and the task's duration and executions per second. The ratio task/baseline is what to compare
between runs (these machines are shared). Results: ``bench/results/mitigation-<database>-<things>x<actions>-<date>.json``.

    .venv/bin/python bench/mitigation.py [--database sqlite|postgresql] [--things 5000] [--actions 5]
                                         [--rate 200] [--load-seconds 4]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment  # noqa: E402
from bench.fleet import Fleet, percentile  # noqa: E402
from bench.fleet_workload import report_template  # noqa: E402
from tests.support.processes import PostgresCluster, ServiceProcess  # noqa: E402

RESULTS = Path(__file__).with_name("results")
ROLE = "arn:aws:iam::123456789012:role/mitigation"
# The fleet's reports list 10 TCP ports (bench/fleet_workload.py): each one violates this.
PORTS = {"name": "ports", "metric": "aws:num-listening-tcp-ports",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 3}}}


def set_up(iot: Any, things: int, actions: int) -> None:  # type: ignore[no-untyped-def]
    """The fleet group and its profile, the things in it, a quarantine group and action per action
    (and the custom metrics the fleet's reports carry, which are refused without them)."""
    iot.create_custom_metric(metricName="cpu", metricType="number")
    iot.create_custom_metric(metricName="temperature", metricType="number")
    iot.create_custom_metric(metricName="firmware", metricType="string-list")
    iot.create_thing_group(thingGroupName="fleet")
    iot.create_security_profile(securityProfileName="fleet", behaviors=[PORTS])
    iot.attach_security_profile(securityProfileName="fleet", securityProfileTargetArn=iot.describe_thing_group(
        thingGroupName="fleet")["thingGroupArn"])

    def register(n: int) -> None:
        iot.create_thing(thingName=f"dev{n}")
        iot.add_thing_to_thing_group(thingGroupName="fleet", thingName=f"dev{n}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(register, range(things)))
    for a in range(actions):
        iot.create_thing_group(thingGroupName=f"quarantine{a}")
        iot.create_mitigation_action(actionName=f"quarantine{a}", roleArn=ROLE, actionParams={
            "addThingsToThingGroupParams": {"thingGroupNames": [f"quarantine{a}"]}})


class Probe(threading.Thread):
    """A CreateThing every ``every`` seconds until stopped; the latencies in ms."""

    def __init__(self, iot: Any, prefix: str, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.iot, self.prefix, self.every = iot, prefix, every
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            began = time.perf_counter()
            try:
                self.iot.create_thing(thingName=f"{self.prefix}-{n}")
                self.latencies.append((time.perf_counter() - began) * 1000)
            except Exception as error:  # a 503 or a timeout is a result here, not a crash
                self.errors.append(type(error).__name__)
            n += 1
            self.stopping.wait(self.every)

    def figures(self) -> dict[str, Any]:
        values = sorted(self.latencies)
        return {"calls": len(values), "errors": len(self.errors), "p50_ms": percentile(values, 0.5),
                "p99_ms": percentile(values, 0.99), "max_ms": round(values[-1], 1) if values else None}


def probed(iot: Any, fleet: Fleet, prefix: str, rate: float, seconds: float, base: int) -> dict[str, Any]:
    """The fleet's reports at ``rate`` for ``seconds`` and the CreateThing probe beside them."""
    probe = Probe(iot, prefix)
    probe.start()
    reports = fleet.open_loop(rate, seconds, base, drain_s=10)
    probe.stopping.set()
    probe.join()
    return {"create_thing": probe.figures(),
            "reports": {key: reports[key] for key in ("sent", "answered", "rejected", "lost", "p50_ms", "p99_ms",
                                                      "max_ms")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--things", type=int, default=5000)
    parser.add_argument("--actions", type=int, default=5)
    parser.add_argument("--rate", type=float, default=200.0, help="reports/s during the probes")
    parser.add_argument("--load-seconds", type=float, default=4.0, help="length of each probe phase")
    args = parser.parse_args()

    postgres = None
    url = None
    if args.database == "postgresql":
        postgres = PostgresCluster()
        postgres.start()
        url = postgres.create_database("mitigation")
    svc = ServiceProcess(data_dir=Path(tempfile.mkdtemp(prefix="bench-mitigation-")), database_url=url,
                         extra_args=["--report-min-interval", "0"])
    svc.start()
    fleet = None
    try:
        iot = svc.client()
        set_up(iot, args.things, args.actions)
        fleet = Fleet("127.0.0.1", svc.mqtt_port, args.things, report_template(), per_process=2500)
        connected = fleet.connect(120)
        violating = fleet.open_loop(args.things, 1.0, 1, drain_s=30)  # each device reports once
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            active = iot.get_paginator("list_active_violations").paginate(securityProfileName="fleet") \
                .build_full_result()["activeViolations"]
            if len(active) >= args.things:
                break
            time.sleep(0.5)
        baseline = probed(iot, fleet, "baseline", args.rate, args.load_seconds, 1_000_000)

        started = time.monotonic()
        iot.start_detect_mitigation_actions_task(taskId="quarantine", target={"securityProfileName": "fleet"},
                                                 actions=[f"quarantine{a}" for a in range(args.actions)])
        during = probed(iot, fleet, "during", args.rate, args.load_seconds, 2_000_000)
        load_ended = time.monotonic() - started
        while True:
            summary = iot.describe_detect_mitigation_actions_task(taskId="quarantine")["taskSummary"]
            if summary["taskStatus"] != "IN_PROGRESS":
                break
            time.sleep(0.2)
        wall_s = time.monotonic() - started
        server_s = (summary["taskEndTime"] - summary["taskStartTime"]).total_seconds()
        members = [len(iot.get_paginator("list_things_in_thing_group").paginate(
            thingGroupName=f"quarantine{a}").build_full_result()["things"]) for a in range(args.actions)]
        executions = args.things * args.actions

        def ratio(key: str, what: str) -> float | None:
            before, now = baseline[what][key], during[what][key]
            return round(now / before, 2) if before and now is not None else None

        result = {
            "benchmark": "mitigation", "command": " ".join(sys.argv), "database": args.database,
            "machine": environment(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "things": args.things, "actions": args.actions, "executions": executions,
            "fleet": {"connected": connected["connected"], "processes": fleet.processes,
                      "violating_reports_answered": violating["answered"], "violations": len(active)},
            "task": {"status": summary["taskStatus"], "statistics": summary["taskStatistics"],
                     "wall_s": round(wall_s, 2), "server_s": round(server_s, 2),
                     "executions_per_s": round(executions / server_s, 1) if server_s else None,
                     "quarantine_group_sizes": members,
                     "still_running_when_the_probes_ended": load_ended < wall_s},
            "baseline": baseline, "during_task": during,
            "ratios_during_over_baseline": {
                "create_thing_p99": ratio("p99_ms", "create_thing"), "create_thing_max": ratio("max_ms", "create_thing"),
                "report_p50": ratio("p50_ms", "reports"), "report_p99": ratio("p99_ms", "reports")},
        }
        print(json.dumps(result, indent=1))
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"mitigation-{args.database}-{args.things}x{args.actions}-{dt.date.today().isoformat()}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"written: {out}", file=sys.stderr)
        if summary["taskStatus"] != "SUCCESSFUL" or members != [args.things] * args.actions:
            raise SystemExit("the task did not quarantine every violating device exactly")
    finally:
        if fleet is not None:
            fleet.close()
        svc.stop()
        if postgres is not None:
            postgres.stop()


if __name__ == "__main__":
    main()
