"""End-to-end pipeline benchmark with a fleet: one MQTT connection per device, the ACL on.

Each device is its own connection (client id = thing name) subscribed at QoS 1 to its own
``$aws/things/<thing>/defender/metrics/json/+``, publishing ~1.8 KB reports at QoS 1; the
service runs with ``--mqtt-acl own`` and 3 security profiles x 10 behaviors attached to all
things. The devices live in several load-generator processes (<= --per-process connections
each) connecting from loopback source addresses 127.0.0.2, 127.0.0.3, ... (bench/fleet.py).

The same fleet, with the same phases, runs twice in one invocation:

* bare:    a separately started Mosquitto with a ``pattern`` ACL confining devices to their own
           topics, and a bare responder answering each report on ``.../json/accepted`` (no
           detection, no storage: bench/bare_responder.py) -- the ratio's denominator;
* service: ``iotdefender serve`` with its default broker (``--broker embedded``: whatever
           ``serve`` runs by default) or joined with ``--mqtt-url`` to a separately started
           Mosquitto carrying the same ACL (``--broker mosquitto``).

Phases, each bounded in time:

1. connect: the whole fleet connects and subscribes at once; time until the last SUBACK (or
   what was reached after --connect-timeout);
2. idle memory: RSS of the broker process(es) and of the service process(es), fleet connected
   and idle, minus the same before the fleet connected, per connected device;
3. first reports: every device sends one report (at --rate, spread evenly), the first the
   service sees from it: its registry facts, monitoring and alarm state are looked up or created
   here, as after a first connection or a restart of the service. Reported apart (p50/p99) from
4. the offered load: --rate reports/s spread evenly over the devices for --seconds; accepted/s,
   p50/p99 publish -> accepted, lost (no reply within the drain). ``accepted`` follows the
   commit of the report's datapoints and violation events, so this is publish -> stored event;
5. ceiling: every device keeps one report in flight for --ceiling-seconds; replies/s is the
   most the set-up answers, and ratio = service / bare;
6. reconnect storm: the service (and its broker) restart; time until every device has
   reconnected and been granted its subscription again (devices retry with jittered backoff).

Results: bench/results/pipeline-<broker>-<devices>.json (not with --quick, which prints one line).

    .venv/bin/python bench/pipeline.py --broker embedded|mosquitto [--devices 5000] [--rate 5000] [--export] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import fleet_workload  # noqa: E402
from bench.common import bounded, environment  # noqa: E402
from bench.fleet import Fleet  # noqa: E402
from bench.fleet_targets import BareTarget, ServiceTarget  # noqa: E402
from bench.process_usage import by_role, cpu_seconds, rss_bytes, sides, split  # noqa: E402

RESULTS = Path(__file__).with_name("results")
FIRST_IDS, OPEN_LOOP_IDS, CLOSED_LOOP_IDS = 500_000_000, 1_000_000_000, 2_000_000_000


def measure(target: BareTarget | ServiceTarget, args: argparse.Namespace) -> dict[str, Any]:
    """All phases against one target; the target and the fleet are gone when this returns."""
    fleet = None
    load_average = {"before": os.getloadavg()[0]}  # other work on the machine shows here
    target.start()
    try:
        time.sleep(1)
        baseline = split(target.pids(), rss_bytes)
        fleet = Fleet("127.0.0.1", target.port, args.devices, fleet_workload.report_template(),
                      per_process=args.per_process)
        connect = fleet.connect(args.connect_timeout)
        time.sleep(args.idle_seconds)
        idle = split(target.pids(), rss_bytes)
        connected = connect["connected"]
        memory = {"baseline_rss_mb": {k: round(v / 2**20, 1) for k, v in baseline.items()},
                  "idle_rss_mb": {k: round(v / 2**20, 1) for k, v in idle.items()},
                  "per_connected_device_kb": {k: round((idle[k] - baseline[k]) / connected / 1024, 2)
                                              for k in idle} if connected else None}
        first = fleet.open_loop(args.rate, max(1.0, args.devices / args.rate), FIRST_IDS, args.drain_seconds)
        roles_before, generator_before = by_role(target.pids(), cpu_seconds), sum(map(cpu_seconds, fleet.pids))
        started = time.monotonic()
        load = fleet.open_loop(args.rate, args.seconds, OPEN_LOOP_IDS, args.drain_seconds)
        elapsed = time.monotonic() - started
        roles_after = by_role(target.pids(), cpu_seconds)
        cpu_before, cpu_after = sides(roles_before), sides(roles_after)
        generator = sum(map(cpu_seconds, fleet.pids)) - generator_before
        # Share of one core each side used during the offered load (2 cores = 2.0 in all).
        load["cores_used"] = {**{k: round((cpu_after[k] - cpu_before[k]) / elapsed, 2) for k in cpu_after},
                              "load_generator": round(generator / elapsed, 2)}
        # CPU per report answered, by process: steadier than latency on a shared machine, and what
        # a change to the code moves (the drain after the load is included: it answers the same reports).
        answered = load["answered"] or 1  # accepted and rejected replies alike
        load["cpu_us_per_answer"] = {**{k: round((roles_after[k] - roles_before[k]) / answered * 1e6)
                                        for k in roles_after}, "load_generator": round(generator / answered * 1e6)}
        ceiling = fleet.closed_loop(args.ceiling_seconds, CLOSED_LOOP_IDS)
        storm = None
        if not args.no_storm:
            fleet.arm_storm()
            restarted = time.monotonic()
            target.restart()
            storm = fleet.wait_storm(restarted, time.monotonic(), args.storm_timeout)
        load_average["after"] = os.getloadavg()[0]
        return {"target": target.label, **target.versions(), "connect": connect, "memory": memory,
                "first_reports": first, "offered_load": load, "ceiling": ceiling, "reconnect_storm": storm,
                "load_average_1min": load_average}
    finally:
        if fleet:
            fleet.close()
        target.stop()


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The one line `make bench-quick` prints."""
    bare, service = result["bare"], result["service"]
    storm = service["reconnect_storm"] or {}
    return {"benchmark": "pipeline-quick", "broker": result["broker"], "devices": result["devices"],
            "service_broker": service["broker"],
            "connect_s": service["connect"]["connect_s"], "connected": service["connect"]["connected"],
            "offered_per_s": result["rate"], "accepted_per_s": service["offered_load"]["answered_per_s"],
            "p50_ms": service["offered_load"]["p50_ms"], "p99_ms": service["offered_load"]["p99_ms"],
            "lost": service["offered_load"]["lost"],
            "reports_per_s": service["ceiling"]["answered_per_s"],
            "bare_per_s": bare["ceiling"]["answered_per_s"], "ratio": result["ratio"],
            "bare_p99_ms": bare["offered_load"]["p99_ms"],
            "storm_s": storm.get("all_back_after_restart_s"),
            "per_device_kb": service["memory"]["per_connected_device_kb"],
            "cpu_us_per_report": service["offered_load"]["cpu_us_per_answer"]}


EXPORT_TOPIC = "bench/export"


def run(args: argparse.Namespace) -> dict[str, Any]:
    bare = measure(BareTarget(), args)
    service = measure(ServiceTarget(args.broker, EXPORT_TOPIC if args.export else None), args)
    bare_rate, service_rate = bare["ceiling"]["answered_per_s"], service["ceiling"]["answered_per_s"]
    return {
        "benchmark": "pipeline",
        "broker": args.broker,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": environment(),
        "devices": args.devices,
        "rate": args.rate,
        "profiles_x_behaviors": "3 x 10",
        "metrics_export": EXPORT_TOPIC if args.export else None,
        "report_bytes": len(fleet_workload.report(OPEN_LOOP_IDS)),
        "ratio": round(service_rate / bare_rate, 3) if bare_rate else None,
        "bare": bare,
        "service": service,
        "note": "One MQTT connection per device (client id = thing name), QoS 1 both ways, each device "
                "subscribed to its own json/+; ACL on. Load generator, broker(s) and service share the "
                "machine's cores. ratio = service ceiling / bare-responder ceiling (1 report in flight "
                "per device). Memory per device: RSS with the fleet connected and idle minus before.",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=("embedded", "mosquitto"), default="embedded")
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=5000.0, help="offered reports/s, spread over all devices")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the offered load")
    parser.add_argument("--drain-seconds", type=float, default=20.0, help="longest wait for replies after it")
    parser.add_argument("--ceiling-seconds", type=float, default=5.0)
    parser.add_argument("--connect-timeout", type=float, default=120.0,
                        help="give up connecting the fleet after this and go on with the devices connected")
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="idle time before memory is read")
    parser.add_argument("--storm-timeout", type=float, default=120.0)
    parser.add_argument("--no-storm", action="store_true")
    parser.add_argument("--per-process", type=int, default=4000, help="connections per load-generator process")
    parser.add_argument("--max-seconds", type=int, default=1500, help="the whole run is stopped after this")
    parser.add_argument("--quick", action="store_true", help="1,500 devices at 1,500/s, short phases (< 90 s)")
    parser.add_argument("--export", action="store_true",
                        help=f"every behavior's metric exported to {EXPORT_TOPIC} (Detect metrics export; no subscriber)")
    parser.add_argument("--output", type=Path, help="the results file (default bench/results/pipeline-<broker>-<devices>.json)")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.rate, args.seconds, args.ceiling_seconds = 1500, 1500.0, 4.0, 3.0
        args.drain_seconds, args.connect_timeout, args.idle_seconds, args.storm_timeout = 8.0, 20.0, 1.0, 15.0
        args.max_seconds = 85
    bounded(args.max_seconds)
    result = run(args)
    if args.quick:
        print(json.dumps(summary(result)))
        return
    output = args.output or RESULTS / f"pipeline-{args.broker}-{args.devices}{'-export' if args.export else ''}.json"
    output.parent.mkdir(exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
