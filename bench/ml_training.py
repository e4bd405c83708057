"""ML Detect in the service: what one training look costs on a retained fleet history.

The history is laid down as the compactor stores it (bench/backtest.py ``lay_down``: one columnar
segment per series and hour, one report per device every 300 s). A profile with one ML behavior on
bytes out covers every device; its collection started before the history, so the first look
builds. Measured, on the service's own code: ``MlTrainer.run_once`` (reading the trailing period
from the segments, keeping the profile's devices, training, storing the model), the model's size,
loading it the way detection does (``ModelRegistry.load``) and judging one datapoint
(``Evaluator``'s ML path: ``engine.ml_behavior.violates``).

    .venv/bin/python bench/ml_training.py [--devices 10000] [--days 14]
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.backtest import BYTES, START, empty_history, fleet_arguments, lay_down  # noqa: E402
from bench.common import environment  # noqa: E402
from iotdefender.engine.ml import ConfidenceLevel  # noqa: E402
from iotdefender.engine.ml_behavior import violates  # noqa: E402
from iotdefender.pipeline.ml_registry import ModelRegistry  # noqa: E402
from iotdefender.pipeline.ml_training import MlTrainer, TrainingSchedule, ml_behaviors  # noqa: E402
from iotdefender.pipeline.monitoring import MonitoringIndex  # noqa: E402
from iotdefender.store import ml_models, profiles  # noqa: E402
from iotdefender.store.database import writing  # noqa: E402
from iotdefender.store.ml_models import PENDING_BUILD, Training  # noqa: E402

RESULTS = Path(__file__).with_name("results")
ARN = "arn:aws:iot:us-east-1:123456789012:"
BEHAVIOR = {"name": "bytes-ml", "metric": BYTES, "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}}}


def main() -> None:
    args = fleet_arguments("--judged", 200_000)
    load_before = os.getloadavg()[0]
    data_dir, engine = empty_history("iotdefender-bench-ml-")
    started = time.perf_counter()
    points, _ = lay_down(engine, args.devices, args.days, START, np.arange(0))
    laid = time.perf_counter() - started
    end = START + args.days * 86400.0
    with writing(engine) as conn:
        profiles.insert(conn, name="fleet", arn=ARN + "securityprofile/fleet", description=None, behaviors=[BEHAVIOR],
                        version=1, creation_date=START, last_modified_date=START)
        profiles.attach(conn, "fleet", ARN + "all/things", START)
        (behavior,) = ml_behaviors(profiles.all_profiles(conn), profiles.attachments(conn))
        ml_models.save_training(conn, Training("fleet", "bytes-ml", behavior.series, behavior.dimension,
                                               behavior.fingerprint, START - 1, PENDING_BUILD, 0, 0.0))
    schedule = TrainingSchedule(training_period=args.days * 86400.0, min_datapoints=25_000, refresh_period=86400.0,
                                expiry=30 * 86400.0)
    trainer = MlTrainer(engine, MonitoringIndex(engine, ARN), schedule, on_published=lambda: None)
    started, cpu = time.perf_counter(), time.process_time()
    (training,) = trainer.run_once(end)
    look, look_cpu = time.perf_counter() - started, time.process_time() - cpu
    load_after_look = os.getloadavg()[0]
    assert training.status == "ACTIVE", training
    with engine.connect() as conn:
        stored = ml_models.load_model(conn, training.key, training.active_version or 0)
        assert stored is not None
        started = time.perf_counter()
        models = ModelRegistry().load(conn)
        loaded = time.perf_counter() - started
    active = models[("fleet", "bytes-ml")]
    rng = np.random.default_rng(1)
    devices = [f"dev-{i:05d}" for i in rng.integers(0, args.devices, args.judged)]
    values = rng.lognormal(np.log(40_000), 0.35, args.judged).tolist()
    times = (end + rng.uniform(0, 86400.0, args.judged)).tolist()
    level = ConfidenceLevel.HIGH
    started, cpu = time.perf_counter(), time.process_time()
    alarms = sum(violates(active, level, d, v, t) for d, v, t in zip(devices, values, times))
    judged, judged_cpu = time.perf_counter() - started, time.process_time() - cpu
    result = {
        "benchmark": "ml_training", "command": " ".join(["bench/ml_training.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "load_average_1min_before": round(load_before, 2), "load_average_1min_after_the_look": round(load_after_look, 2),
        "devices": args.devices, "days": args.days, "datapoints": points, "lay_down_s": round(laid, 1),
        "training_look_s": round(look, 2), "training_look_cpu_s": round(look_cpu, 2), "model_bytes": len(stored.model),
        "model_bytes_per_device": round(len(stored.model) / args.devices, 1),
        "devices_with_own_band": active.model.summary().devices_with_own_band,
        "model_load_s": round(loaded, 3), "judge_us_per_datapoint": round(judged / args.judged * 1e6, 2),
        "judge_cpu_us_per_datapoint": round(judged_cpu / args.judged * 1e6, 2),
        "normal_datapoints_judged_high": alarms, "of": args.judged,
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"ml-training-{args.devices}x{args.days}d-{datetime.date.today().isoformat()}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
