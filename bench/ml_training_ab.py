"""One timed ``train`` of ML Detect at 100k devices x 14 days (403.2M datapoints), for timing two
versions of the code alternately on a shared machine (bench/README.md, "HIGH at 100k devices").

The fleet is bench/ml_fleet.py's timing fleet (seed 21/22, as bench/ml_detect.py's training-time
run), generated once and kept as .npy files so each run only loads it:

    .venv/bin/python bench/ml_training_ab.py --generate DIR
    PYTHONPATH=/work/main/src .venv/bin/python bench/ml_training_ab.py DIR [--max-datapoints N]
    PYTHONPATH=src .venv/bin/python bench/ml_training_ab.py DIR
    PYTHONPATH=src .venv/bin/python bench/ml_training_ab.py DIR --share 0.2

``--share`` plants anomalies in that share of the devices' window after loading (bench/ml_fleet.py's
kinds, seed 7 as bench/ml_detect.py's trained-with-anomalies rows): the level shifts and drifts
that training fits a second time without (engine/ml/shifts.py).

Prints one JSON line: wall and CPU seconds of ``train``, the load average before and after, the
median thresholds (equal thresholds: the same model), and memory: the process's resident set
before training (the loaded columns: 16 bytes a datapoint), its high-water mark
(``resource.getrusage``' ru_maxrss, loading included; training's own peak is their difference)
and the stored model's size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import ml_fleet  # noqa: E402
from iotdefender.engine.ml import TrainingData, TrainingSettings, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--generate", action="store_true")
    parser.add_argument("--max-datapoints", type=int, help="TrainingSettings.max_datapoints (default: its default)")
    parser.add_argument("--share", type=float, default=0.0, help="share of devices with anomalies planted in the window")
    args = parser.parse_args()
    columns = {name: args.directory / f"{name}.npy" for name in ("device", "time", "value")}
    if args.generate:
        args.directory.mkdir(parents=True, exist_ok=True)
        fleet = ml_fleet.make_devices(100_000, seed=21)
        period = ml_fleet.generate(fleet, 0, 14, seed=22)
        for name, path in columns.items():
            np.save(path, getattr(period, name))
        return
    device, times, values = (np.load(path) for path in columns.values())
    n_devices = int(device.max()) + 1
    planted = 0
    if args.share:
        fleet = ml_fleet.make_devices(n_devices, seed=21)
        planted = len(ml_fleet.inject(fleet, ml_fleet.Period(device, times, values, len(device) // n_devices),
                                      args.share, seed=7))
    data = TrainingData(device, [f"thing-{i:06d}" for i in range(n_devices)], times, values)
    settings = TrainingSettings() if args.max_datapoints is None else TrainingSettings(max_datapoints=args.max_datapoints)
    load = os.getloadavg()[0]
    resident = _resident_mb()
    started, cpu = time.perf_counter(), time.process_time()
    model = train(data, trained_at=float(times[-1]), settings=settings)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"code": os.environ.get("PYTHONPATH", ""), "max_datapoints": settings.max_datapoints,
                      "share_with_anomalies": args.share, "anomalies_planted": planted,
                      "train_seconds": round(seconds, 2), "train_cpu_seconds": round(cpu, 2),
                      "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
                      "rss_before_training_mb": resident,
                      "model_bytes": len(model.to_bytes()),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "datapoints_used": model.summary().datapoints_used,
                      "thresholds_median_over_tail_cohorts": model.summary().thresholds}))


def _resident_mb() -> float:
    """The process's resident set now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


if __name__ == "__main__":
    main()
