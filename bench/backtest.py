"""Backtest benchmark: 7 days of retained history of a 10k-device fleet, replayed in one run.

The history is laid down as the compactor stores it (store/history.py ``write_segment``: one
columnar segment per series and hour) in a fresh SQLite database, at AWS's reporting cadence of one
report per device every 300 s: 2,016 reports per device, 20.2 million datapoints per metric.
Laying it down through MQTT would take hours; compaction itself is tested in
tests/integration/test_history.py.

Measured: ``run_backtest`` (what ``POST /_iotdefender/backtests`` runs) for a profile of two
behaviors — a port count (static) and bytes out summed over 600 s with 2 consecutive datapoints
to alarm — each with its default threshold sweep. Target: under 10 s.

Checked: for a random sample of devices, the same week replayed report by report through the
live engine (``Evaluator``) gives exactly the same events as the fast path.

    .venv/bin/python bench/backtest.py [--devices 10000] [--days 7] [--sample 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment  # noqa: E402
from iotdefender.backtest.runner import (BacktestRequest, _replayed, _vectorised,  # noqa: E402
                                         fast_path_threshold, run_backtest)
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head, writing  # noqa: E402
from iotdefender.store.history import SeriesPoints, read_series, write_segment  # noqa: E402

RESULTS = Path(__file__).with_name("results")
INTERVAL = 300.0
START = 1_700_000_000.0
PORTS = "aws:num-listening-tcp-ports"
BYTES = "aws:all-bytes-out"
BEHAVIORS = [
    {"name": "ports", "metric": PORTS, "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 3}}},
    {"name": "bytes-out", "metric": BYTES,
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 400_000}, "durationSeconds": 600,
                  "consecutiveDatapointsToAlarm": 2, "consecutiveDatapointsToClear": 2}},
]


def lay_down(engine, devices: int, days: int, start: float, sample: np.ndarray, seed: int = 7):
    """Write the week hour by hour; return the sample devices' reports for the engine replay."""
    rng = np.random.default_rng(seed)
    names = [f"dev-{i:05d}" for i in range(devices)]
    offsets = rng.uniform(0, INTERVAL, devices)
    # A few devices misbehave for a while: an extra open port, or a traffic burst.
    port_anomaly = {int(d): (rng.uniform(0, days * 86400), rng.uniform(3600, 6 * 3600))
                    for d in rng.choice(devices, devices // 100, replace=False)}
    burst_anomaly = {int(d): (rng.uniform(0, days * 86400), rng.uniform(1800, 3 * 3600))
                     for d in rng.choice(devices, devices // 200, replace=False)}
    per_hour = int(3600 / INTERVAL)
    thing_index = np.tile(np.arange(devices, dtype=np.int32), per_hour)
    slots = np.repeat(np.arange(per_hour), devices)
    sample_set = set(sample.tolist())
    sample_reports: list[tuple[str, float, dict]] = []
    points = 0
    for hour in range(days * 24):
        times = start + hour * 3600.0 + slots * INTERVAL + offsets[thing_index]
        ports = np.full(len(times), 3.0)
        ports[rng.random(len(times)) < 0.0005] = 4.0  # a stray port now and then
        for d, (at, length) in port_anomaly.items():
            t0 = start + at
            if t0 <= start + (hour + 1) * 3600 and t0 + length >= start + hour * 3600:
                mask = (thing_index == d) & (times >= t0) & (times <= t0 + length)
                ports[mask] = 5.0
        sent = np.round(rng.lognormal(np.log(40_000), 0.35, len(times)))
        for d, (at, length) in burst_anomaly.items():
            t0 = start + at
            if t0 <= start + (hour + 1) * 3600 and t0 + length >= start + hour * 3600:
                mask = (thing_index == d) & (times >= t0) & (times <= t0 + length)
                sent[mask] *= 20
        with writing(engine) as conn:
            write_segment(conn, PORTS, SeriesPoints(names, thing_index, times, ports))
            write_segment(conn, BYTES, SeriesPoints(names, thing_index, times, sent))
        points += len(times)
        chosen = np.isin(thing_index, sample)
        for i, t, p, b in zip(thing_index[chosen].tolist(), times[chosen].tolist(), ports[chosen].tolist(),
                              sent[chosen].tolist()):
            if i in sample_set:
                sample_reports.append((names[i], t, {PORTS: {"count": int(p)}, BYTES: {"count": int(b)}}))
    sample_reports.sort(key=lambda r: (r[1], r[0]))
    return points, sample_reports


def canonical(events: list, things: set[str]) -> list:
    return sorted((t, at, k, float(next(iter(v.values())))) for t, at, k, v in events if t in things)


def fleet_arguments(option: str, default: int) -> argparse.Namespace:
    """--devices and --days of the laid-down fleet, and one option of the benchmark itself."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument(option, type=int, default=default)
    return parser.parse_args()


def empty_history(prefix: str):
    """A fresh SQLite database at the current schema, in a temp directory."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    engine = create_engine(sqlite_url(data_dir))
    upgrade_to_head(engine)
    return data_dir, engine


def main() -> None:
    args = fleet_arguments("--sample", 200)
    data_dir, engine = empty_history("bench-backtest-")
    start = START
    end = start + args.days * 86400.0
    sample = np.random.default_rng(11).choice(args.devices, min(args.sample, args.devices), replace=False)
    began = time.perf_counter()
    points, sample_reports = lay_down(engine, args.devices, args.days, start, sample)
    laid_down_s = time.perf_counter() - began
    db_bytes = sum(f.stat().st_size for f in data_dir.iterdir())

    request = BacktestRequest(BEHAVIORS, start, end, covers=lambda thing: True)
    began = time.perf_counter()
    result = run_backtest(engine, request)
    backtest_s = time.perf_counter() - began

    # The fast path against the live engine, report by report, on the sample devices.
    sample_names = {r[0] for r in sample_reports}
    began = time.perf_counter()
    engine_outcomes = _replayed(request, BEHAVIORS, [sample_reports], len(sample_reports), lambda f, m: None)
    engine_s = time.perf_counter() - began
    fast_request = BacktestRequest(BEHAVIORS, start, end, covers=lambda thing: thing in sample_names, sweeps={
        b["name"]: [] for b in BEHAVIORS})
    matches = {}
    with engine.connect() as conn:
        for outcome in engine_outcomes:
            behavior = outcome.behavior
            series = read_series(conn, behavior["metric"], start, end)
            fast = _vectorised(fast_request, behavior, series, fast_path_threshold(behavior))
            matches[behavior["name"]] = {"engineEvents": len(outcome.events), "fastEvents": len(fast.events),
                                         "identical": canonical(outcome.events, sample_names)
                                         == canonical(fast.events, sample_names)}
    output = {
        "benchmark": "backtest",
        "command": " ".join(["python", "bench/backtest.py", *sys.argv[1:]]),
        "environment": environment(),
        "devices": args.devices,
        "days": args.days,
        "datapointsPerMetric": points,
        "history": {"laidDownSeconds": round(laid_down_s, 2), "databaseBytes": db_bytes},
        "backtestSeconds": round(backtest_s, 3),
        "target": {"seconds": 10.0, "met": backtest_s < 10.0},
        "behaviors": [{k: b[k] for k in ("behaviorName", "method", "datapoints", "devicesEvaluated",
                                          "devicesInAlarm", "alarms", "cleared", "invalidated")}
                      | {"sweepThresholds": len(b["sweep"])} for b in result["behaviors"]],
        "liveEngineCheck": {"sampleDevices": len(sample_names), "reports": len(sample_reports),
                            "engineSeconds": round(engine_s, 3),
                            "engineReportsPerSecond": round(len(sample_reports) / engine_s) if engine_s else None,
                            "behaviors": matches,
                            "identical": all(m["identical"] for m in matches.values())},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backtest.json").write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps(output, indent=2))


if __name__ == "__main__":
    main()
