"""ML Detect with few datapoints per device: how often fresh normal datapoints reach each level,
against the rates the levels state (``TrainingSettings.exceedance``: LOW 1e-3, MEDIUM 1e-4,
HIGH 2e-6).

The README's ML recipe (``--time-scale 3600 --ml-training-period 200``, 20 simulated devices
reporting every 0.2-0.5 s) trains on ~400-1,000 datapoints a device over 1.2 model weeks, one to
three per half-hour slot of the week, where the benchmark fleet (bench/ml_detect.py) has 4,032. Two
fleets, each trained ``--repeats`` times on fresh training draws, then judged on fresh normal
datapoints of the same devices (``--fresh`` a device, at random times over the week after):

* ``simulator``: what ``iotdefender simulate`` sends as bytes out (simulator/devices.py): each
  report int(gauss(40,000, 5,000)), every device alike, no rhythm; ``--devices`` devices with
  ``--points`` datapoints each (several sizes) evenly over 200 model hours;
* ``bench-sparse``: bench/ml_fleet.py's devices (levels, rhythms, Student-t noise for 10 %) reporting
  every 30 minutes for 8 days (384 datapoints each) instead of every 5 minutes for 14.

Per fleet and size: the exceedance per level (pooled over repeats) and its ratio to the target,
and the median thresholds. No anomalies: every flagged datapoint is a false alarm.

    .venv/bin/python bench/ml_small.py [--repeats 5] [--output PATH]

Writes bench/results/ml-small-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import ml_fleet  # noqa: E402
from bench.common import environment  # noqa: E402
from iotdefender.engine.ml import LEVELS, TrainingData, TrainingSettings, train  # noqa: E402

RESULTS = Path(__file__).with_name("results")
HOUR = 3600.0
START = ml_fleet.START


def simulator_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """simulator/devices.py's bytes out: max(0, int(gauss(40,000, 5,000)))."""
    return np.maximum(0.0, np.trunc(rng.normal(40_000.0, 5_000.0, n)))


def simulator_fleet(devices: int, points: int, fresh: int, seed: int) -> tuple[TrainingData, TrainingData]:
    """Training: ``points`` a device evenly over 200 model hours (each device at its own phase);
    fresh: ``fresh`` a device at uniform times over the next model week."""
    rng = np.random.default_rng(seed)
    names = [f"device-{i:04d}" for i in range(devices)]
    step = 200 * HOUR / points
    phase = rng.uniform(0, step, devices)
    times = (START + np.arange(points)[None, :] * step + phase[:, None]).ravel()
    device = np.repeat(np.arange(devices, dtype=np.int32), points)
    train_data = TrainingData(device, names, times, simulator_values(rng, len(times)))
    end = START + 200 * HOUR
    fresh_times = np.sort(rng.uniform(end, end + 168 * HOUR, (devices, fresh)), axis=1).ravel()
    fresh_device = np.repeat(np.arange(devices, dtype=np.int32), fresh)
    return train_data, TrainingData(fresh_device, names, fresh_times, simulator_values(rng, len(fresh_times)))


def sparse_bench_fleet(devices: int, every: int, train_days: int, test_days: int, seed: int,
                       ) -> tuple[TrainingData, TrainingData]:
    """bench/ml_fleet.py's devices reporting every ``every`` 5-minute steps for ``train_days``;
    fresh: every 5-minute report of the ``test_days`` after."""
    fleet = ml_fleet.make_devices(devices, seed=1)
    period = ml_fleet.generate(fleet, 0, train_days, seed=seed)
    keep = (np.arange(len(period.device)) % period.per_device) % every == 0
    train_data = TrainingData(period.device[keep], fleet.names, period.time[keep], period.value[keep])
    test = ml_fleet.generate(fleet, train_days, test_days, seed=seed + 1000)
    return train_data, TrainingData(test.device, fleet.names, test.time, test.value)


def exceedance(runs: list[tuple[TrainingData, TrainingData]], settings: TrainingSettings) -> dict:
    """Train on each run's training data, judge its fresh data; pooled rates per level."""
    reached = np.zeros(len(LEVELS), dtype=np.int64)
    judged = 0
    thresholds: list[dict[str, float]] = []
    own = []
    seconds = 0.0
    worst_device_high = 0
    for train_data, fresh in runs:
        started = time.perf_counter()
        model = train(train_data, trained_at=float(train_data.time.max()), settings=settings)
        seconds += time.perf_counter() - started
        ranks = model.levels(fresh)
        reached += np.array([int(np.count_nonzero(ranks >= r)) for r in range(len(LEVELS))])
        judged += len(ranks)
        worst_device_high = max(worst_device_high, int(np.bincount(fresh.device[ranks >= 2],
                                                                   minlength=len(fresh.devices)).max()))
        thresholds.append(model.summary().thresholds)
        own.append(model.summary().devices_with_own_band)
    result = {"trainings": len(runs), "fresh_datapoints": judged, "devices_with_own_band": own,
              "train_seconds_each": round(seconds / len(runs), 3),
              "most_high_on_one_device_in_one_training": worst_device_high, "levels": {}}
    for i, (level, target) in enumerate(settings.exceedance):
        rate = reached[i] / judged
        result["levels"][level.value] = {
            "reached": int(reached[i]), "rate": float(f"{rate:.3g}"), "target": target,
            "ratio_to_target": round(rate / target, 2),
            "per_10000": round(rate * 10_000, 3),
            "threshold_median": round(float(np.median([t[level.value] for t in thresholds])), 3)}
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--points", type=int, nargs="+", default=[400, 1_000])
    parser.add_argument("--fresh", type=int, default=100_000, help="fresh normal datapoints a simulator device")
    parser.add_argument("--bench-devices", type=int, default=200)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    settings = TrainingSettings()
    started = time.perf_counter()
    fleets: dict[str, dict] = {}
    for points in args.points:
        runs = [simulator_fleet(args.devices, points, args.fresh, seed) for seed in range(args.repeats)]
        fleets[f"simulator-{args.devices}x{points}"] = exceedance(runs, settings)
        print(f"simulator-{args.devices}x{points}", json.dumps(fleets[f"simulator-{args.devices}x{points}"]["levels"]),
              flush=True)
    runs = [sparse_bench_fleet(args.bench_devices, 6, 8, 7, seed=10 + seed) for seed in range(args.repeats)]
    name = f"bench-{args.bench_devices}-every-30-min-8-days"
    fleets[name] = exceedance(runs, settings)
    print(name, json.dumps(fleets[name]["levels"]), flush=True)
    output = {
        "benchmark": "ml_small", "command": " ".join(["bench/ml_small.py", *(argv or sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "targets": {level.value: share for level, share in settings.exceedance},
        "fleets": fleets, "seconds": round(time.perf_counter() - started, 1)}
    if not args.no_write:
        path = args.output or RESULTS / f"ml-small-{datetime.date.today().isoformat()}.json"
        path.write_text(json.dumps(output, indent=2) + "\n")
    return output


if __name__ == "__main__":
    main()
