"""Paired CPU time of ``train``: two versions of the code in one process on the same data,
alternately, and whether their stored models are byte-identical (bench/README.md, "Training time,
paired"). Single runs of bench/ml_training_ab.py at 100k devices moved between 33.7 and 64.0 s of CPU
for the same code on a quiet machine on 2026-11-30, more than a speed-up of a few per cent.

The code before is a copy of its ``src/iotdefender`` renamed ``iotdefender_old`` (the import lines
rewritten with sed), in OLD_DIR; the fleet is bench/ml_training_ab.py's (--generate):

    PYTHONPATH=src .venv/bin/python bench/ml_training_pair.py FLEET_DIR DEVICES REPS OLD_DIR

DEVICES the first devices of the fleet, sampled in proportion (12M datapoints at 100k devices).
Prints one JSON line: each run's CPU and wall seconds and the 1-minute load average before it,
the medians, the per-pair differences (after - before, runs i and i+1 of each version in the same
order-alternated pair) and the machine.
"""
import importlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, sys.argv[4])
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment  # noqa: E402
# The code before exists only in OLD_DIR, put on the path above: imported by name at run time.
old = importlib.import_module("iotdefender_old.engine.ml")
from iotdefender.engine import ml as new  # noqa: E402

d, k, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
device, times, values = (np.load(f"{d}/{n}.npy", mmap_mode="r") for n in ("device", "time", "value"))
stop = int(np.searchsorted(device, k)) if k < 100_000 else len(device)
device, times, values = np.array(device[:stop]), np.array(times[:stop]), np.array(values[:stop])
names = [f"thing-{i:06d}" for i in range(k)]
res: dict[str, list[float]] = {"before": [], "after": []}
wall: dict[str, list[float]] = {"before": [], "after": []}
load: dict[str, list[float]] = {"before": [], "after": []}
raw = {}
for i in range(reps):
    for name, m in ((("before", old), ("after", new)) if i % 2 == 0 else (("after", new), ("before", old))):
        data = m.TrainingData(device, names, times, values)
        load[name].append(round(os.getloadavg()[0], 2))
        t0, w0 = os.times(), time.perf_counter()
        model = m.train(data, trained_at=float(times[-1]), settings=m.TrainingSettings(max_datapoints=12_000_000 * k // 100_000))
        t1, w1 = os.times(), time.perf_counter()
        res[name].append(round(t1.user - t0.user + t1.system - t0.system, 2))
        wall[name].append(round(w1 - w0, 2))
        raw[name] = model.to_bytes()
        del model, data
print(json.dumps({"command": " ".join(sys.argv), "devices": k, "datapoints": int(stop), "cpu_seconds": res,
                  "wall_seconds": wall, "load_average_1min_before_run": load,
                  "median": {n: float(np.median(v)) for n, v in res.items()},
                  "pair_differences": [round(a - b, 2) for a, b in zip(res["after"], res["before"])],
                  "byte_identical": raw["before"] == raw["after"], "environment": environment()}))
