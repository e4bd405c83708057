"""ML Detect with few datapoints per device, with anomalies: bench/ml_small.py's sparse fleet
(bench/ml_fleet.py's 200 devices reporting every 30 minutes for 8 days: 384 datapoints each),
judged on the next 7 days at every 5 minutes with bench/ml_fleet.py's anomalies on 20 % of the
devices, scored as bench/ml_detect.py scores its fleet. What the sparse fleet's thresholds cost in
detection (bench/ml_small.py counts only false alarms).

    .venv/bin/python bench/ml_small_anomalies.py [--repeats 20] [--output PATH]

Pooled over ``--repeats`` trainings (seeds 10, 11, ... as bench/ml_small.py). Writes
bench/results/ml-small-anomalies-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import ml_detect, ml_fleet  # noqa: E402
from bench.common import environment  # noqa: E402
from iotdefender.engine.ml import LEVELS, TrainingData, TrainingSettings, train  # noqa: E402

RESULTS = Path(__file__).with_name("results")
DEVICES = 200


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    fleet = ml_fleet.make_devices(DEVICES, seed=1)
    totals = {level.value: {"alarms": 0, "false_alarms": 0, "found": 0, "anomalies": 0,
                            "spikes_5_mad_or_more_found": {"all": [0, 0], "normal noise": [0, 0], "student-t": [0, 0]}}
              for level in LEVELS}
    load = os.getloadavg()[0]
    for seed in range(10, 10 + args.repeats):
        period = ml_fleet.generate(fleet, 0, 8, seed=seed)
        keep = (np.arange(len(period.device)) % period.per_device) % 6 == 0
        model = train(TrainingData(period.device[keep], fleet.names, period.time[keep], period.value[keep]),
                      trained_at=float(period.time[keep].max()), settings=TrainingSettings())
        week = ml_fleet.generate(fleet, 8, 7, seed=seed + 1000)
        anomalies = ml_fleet.inject(fleet, week, 0.2, seed=seed + 2000)
        ranks = model.levels(TrainingData(week.device, fleet.names, week.time, week.value))
        for rank, level in enumerate(LEVELS):
            figures = ml_detect.evaluate(ranks >= rank, anomalies, DEVICES, week.per_device, 7, fleet)
            total = totals[level.value]
            total["alarms"] += figures["alarms"]
            total["false_alarms"] += figures["false_alarms"]
            total["found"] += round(figures["recall"] * len(anomalies))
            total["anomalies"] += len(anomalies)
            for kind, (found, of) in figures["spikes_5_mad_or_more_found"].items():
                total["spikes_5_mad_or_more_found"][kind][0] += found
                total["spikes_5_mad_or_more_found"][kind][1] += of
    for total in totals.values():
        precision = 1 - total["false_alarms"] / total["alarms"] if total["alarms"] else 0.0
        recall = total["found"] / total["anomalies"]
        total.update(precision=round(precision, 4), recall=round(recall, 4),
                     f1=round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
                     false_alarms_per_1000_device_days=round(total["false_alarms"] / (DEVICES * 7 * args.repeats) * 1000, 3))
    output = {"benchmark": "ml_small_anomalies",
              "command": " ".join(["bench/ml_small_anomalies.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "environment": environment(), "load_average_1min_before": round(load, 2),
              "trainings": args.repeats, "levels": totals}
    path = args.output or RESULTS / f"ml-small-anomalies-{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps({level: {k: v for k, v in t.items() if k in ("f1", "precision", "recall",
                                                                   "false_alarms_per_1000_device_days",
                                                                   "spikes_5_mad_or_more_found")}
                      for level, t in totals.items()}))
    return output


if __name__ == "__main__":
    main()
