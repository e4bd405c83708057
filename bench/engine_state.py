"""Engine state benchmarks, driven in-process: memory per monitored thing and percentile recompute.

1. memory: RSS growth per monitored thing after every thing sent reports evaluated against one
   profile of 10 behaviors (half with durationSeconds, so windows hold history), plus the per-thing
   state ingest keeps (last report id and time) — the state a live service holds for each device.
   Every 20th thing violates (alarm state kept). Target <= 2 KB per thing.
2. percentiles: time for the fleet statistics to close a window of N device values and compute
   the percentile (numpy), for 1M devices. Target <= 1 s.

    .venv/bin/python bench/engine_state.py [--things 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment  # noqa: E402
from iotdefender.engine.alarm import counting_ids  # noqa: E402
from iotdefender.engine.evaluator import Evaluator  # noqa: E402
from iotdefender.engine.statistics import FleetStatistics  # noqa: E402

RESULTS = Path(__file__).with_name("results")
PROFILE = {"name": "p", "behaviors": [
    {"name": "tcp", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 443, 8883]}}},
    {"name": "ntcp", "metric": "aws:num-listening-tcp-ports", "criteria": {"comparisonOperator": "less-than",
                                                                          "value": {"count": 10}}},
    {"name": "bo", "metric": "aws:all-bytes-out", "criteria": {"comparisonOperator": "less-than",
                                                               "value": {"count": 10**6}, "durationSeconds": 900}},
    {"name": "bi", "metric": "aws:all-bytes-in", "criteria": {"comparisonOperator": "less-than",
                                                              "value": {"count": 10**6}, "durationSeconds": 900}},
    {"name": "po", "metric": "aws:all-packets-out", "criteria": {"comparisonOperator": "less-than",
                                                                 "value": {"count": 10**5}, "durationSeconds": 600}},
    {"name": "pi", "metric": "aws:all-packets-in", "criteria": {"comparisonOperator": "less-than",
                                                                "value": {"count": 10**5}, "durationSeconds": 600}},
    {"name": "conns", "metric": "aws:num-established-tcp-connections",
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 50}, "durationSeconds": 300}},
    {"name": "dest", "metric": "aws:destination-ip-addresses",
     "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/8"]}}},
    {"name": "cpu", "metric": "cpu", "criteria": {"comparisonOperator": "less-than", "value": {"number": 90}}},
    {"name": "fw", "metric": "fw", "criteria": {"comparisonOperator": "in-set", "value": {"strings": ["2.4.1"]}}},
]}


def datapoints(violating: bool) -> dict:
    return {"aws:listening-tcp-ports": {"ports": [22, 443, 4444 if violating else 8883]},
            "aws:num-listening-tcp-ports": {"count": 3}, "aws:all-bytes-out": {"count": 40000},
            "aws:all-bytes-in": {"count": 60000}, "aws:all-packets-out": {"count": 300},
            "aws:all-packets-in": {"count": 400}, "aws:num-established-tcp-connections": {"count": 4},
            "aws:destination-ip-addresses": {"cidrs": ["10.20.0.1", "10.20.0.2"]}, "cpu": {"number": 35.0},
            "fw": {"strings": ["2.4.1"]}}


def memory_per_thing(things: int) -> dict:
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    evaluator = Evaluator(counting_ids())
    last_reports: dict[str, tuple[int, float]] = {}
    started = time.perf_counter()
    for report in range(2):  # two reports each, so duration windows hold history
        for i in range(things):
            thing = f"device-{i:07d}"
            at = 1000.0 + report * 300 + i * 1e-6
            evaluation = evaluator.evaluate(thing, [PROFILE], datapoints(i % 20 == 0), at)
            evaluator.apply(evaluation.changes)
            last_reports[thing] = (report + 1, at)
    elapsed = time.perf_counter() - started
    gc.collect()
    grown = process.memory_info().rss - before
    alarms = len(evaluator.alarms())
    return {"things": things, "rss_growth_mb": round(grown / 2**20, 1), "bytes_per_thing": round(grown / things),
            "alarm_states": alarms, "evaluations_per_s": round(2 * things * 10 / elapsed)}


def percentile_recompute(devices: int) -> dict:
    stats, changes = FleetStatistics(), {}
    key, window = ("p", "b"), 300.0
    for i in range(devices):
        stats.observe(key, "p90", window, f"d{i}", float(i % 1000), 10.0, changes)
    stats.apply(changes)
    started = time.perf_counter()
    threshold = stats.threshold(key, "p90", window, 310.0, {})  # closes the window: percentile of all devices
    return {"devices": devices, "recompute_s": round(time.perf_counter() - started, 3),
            "threshold": threshold[0] if threshold else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--things", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--devices", type=int, default=1_000_000)
    args = parser.parse_args()
    result = {"benchmark": "engine_state", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": environment(),
              "behaviors_per_thing": len(PROFILE["behaviors"]),
              "memory": [memory_per_thing(n) for n in args.things],
              "percentiles": percentile_recompute(args.devices),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine_state.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
