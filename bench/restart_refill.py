"""Restart cost of refilling the windows of ``durationSeconds`` (pipeline/detection.py ``load``).

A fleet whose profile sums a device-side and a cloud-side metric over the hour (durationSeconds
3600) has an hour of datapoints stored: one device report and one cloud-side window per device
every 300 s (12 each per hour). Measured: ``DetectionService.load()`` — the alarm states and the
windows read back from the retained history — as the service's (or detection worker's) start runs
it, once with the hour compacted into columnar segments (the steady state: the compactor runs every
``--history-interval``) and once with none of it compacted (the worst case: every row decoded from
its JSON document). Also the engine's own share (``Evaluator.load`` of the windows read), and a
cluster node's ``take_over`` of one partition of 64: with ``--partitioned`` the rows carry their
partition and the hour is compacted as a cluster's compactor does (a segment per series and
partition), and the takeover reads only its partition's rows and segments; without it, rows and
segments of the whole fleet (as releases before 0018/0019 wrote them), which a takeover reads whole
and filters.

    .venv/bin/python bench/restart_refill.py [--devices 20000] [--partitioned]
        [--database-url URL | --postgres] [--output FILE]

``--postgres`` starts a throwaway PostgreSQL (the tests' Debian binaries) for the run.
``--only-partition 0`` stores only partition 0's devices of the fleet: a takeover of one
partition at a fleet too large to store here (10M devices: 156,000 of them, 3.7M rows); the
whole-fleet load and the uncompacted case then read that partition's rows only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment, report  # noqa: E402
from iotdefender.alerts.routes import AlertRoutes  # noqa: E402
from iotdefender.cluster.partitions import partition_of  # noqa: E402
from iotdefender.pipeline.detection import DetectionService  # noqa: E402
from iotdefender.pipeline.monitoring import MonitoringIndex  # noqa: E402
from iotdefender.store import history, metric_values, profiles  # noqa: E402
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head, writing  # noqa: E402
from tests.support.processes import PostgresCluster  # noqa: E402

ARN = "arn:aws:iot:us-east-1:123456789012:"
INTERVAL = 300.0
BEHAVIORS = [
    {"name": "bytes-1h", "metric": "aws:all-bytes-out",
     "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 10_000_000}, "durationSeconds": 3600}},
    {"name": "msgs-1h", "metric": "aws:num-messages-sent",
     "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 100_000}, "durationSeconds": 3600}},
]


def lay_down(engine, devices: int, now: float, only_partition: int | None = None,  # type: ignore[no-untyped-def]
             partitioned: bool = False) -> int:
    """The trailing hour of ``devices`` devices, or of those among them in ``only_partition``;
    ``partitioned``: each row with its thing's partition, as this release's ingest writes them."""
    rng = np.random.default_rng(7)
    offsets = rng.uniform(0, INTERVAL, devices)
    kept = range(devices) if only_partition is None else \
        [d for d in range(devices) if partition_of(f"dev-{d:05d}") == only_partition]
    with writing(engine) as conn:
        profiles.insert(conn, name="fleet", arn=f"{ARN}securityprofile/fleet", behaviors=BEHAVIORS, version=1,
                        creation_date=now, last_modified_date=now)
        profiles.attach(conn, "fleet", f"{ARN}all/things", now)
    rows = 0
    for slot in range(12):  # the trailing hour, oldest first, as ingest stores it
        start = now - 3600 + slot * INTERVAL
        batch = []
        for d in kept:
            thing = f"dev-{d:05d}"
            batch.append(metric_values.RetainedReport(thing, start + offsets[d],
                                                      {"aws:all-bytes-out": {"count": 40_000 + d % 100}}))
            batch.append(metric_values.RetainedReport(thing, (start // INTERVAL + 1) * INTERVAL,
                                                      {"aws:num-messages-sent": {"count": 12}}))
        for first in range(0, len(batch), 50_000):  # transactions within --database-timeout
            with writing(engine) as conn:
                metric_values.insert_reports(conn, batch[first:first + 50_000], partition_of if partitioned else None)
        rows += len(batch)
    return rows


def timed_load(engine, now: float) -> dict:  # type: ignore[no-untyped-def]
    """The single box's whole load, then a cluster node's takeover of partition 0."""
    monitoring = MonitoringIndex(engine, ARN)
    detection = DetectionService(engine, monitoring, AlertRoutes(), 2 * 86400.0, clock=lambda: now)
    started = time.perf_counter()
    detection.load()
    took = time.perf_counter() - started
    history_of = detection.evaluator._history
    points = sum(len(p) for by_series in history_of.values() for p in by_series.values())
    # The engine's share: handing the same windows to a fresh evaluator.
    windows = {t: {s: list(p) for s, p in by_series.items()} for t, by_series in history_of.items()}
    started = time.perf_counter()
    detection.evaluator.load({}, windows)
    engine_s = time.perf_counter() - started
    node = DetectionService(engine, monitoring, AlertRoutes(), 2 * 86400.0, clock=lambda: now)  # a node holding nothing
    started = time.perf_counter()
    node.take_over(lambda conn: {0})  # partition 0: --only-partition 0 stores it
    take_over_s = time.perf_counter() - started
    taken = node.evaluator._history
    return {"load_s": round(took, 3), "engine_load_s": round(engine_s, 3), "things": len(history_of),
            "datapoints": points, "take_over_one_partition_s": round(take_over_s, 3),
            "take_over_things": len(taken),
            "take_over_datapoints": sum(len(p) for by_series in taken.values() for p in by_series.values())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--database-url")
    parser.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL for the run")
    parser.add_argument("--partitioned", action="store_true", help="compact per partition, as a cluster does")
    parser.add_argument("--only-partition", type=int,
                        help="store only this partition's devices of the fleet (its share, for a takeover at a "
                             "fleet too large to store whole; the loads and the uncompacted case are then its only)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        url = args.database_url or sqlite_url(Path(scratch))
        if args.postgres:
            server = PostgresCluster()
            server.start()
            stack.callback(server.stop)
            url = server.create_database("refill")
        engine = create_engine(url)
        upgrade_to_head(engine)
        now = float(int(time.time() // INTERVAL) * INTERVAL) + 1.0
        rows = lay_down(engine, args.devices, now, args.only_partition, args.partitioned)
        uncompacted = timed_load(engine, now)
        started = time.perf_counter()
        history.compact_until(engine, history.max_row_id(engine.connect()), partition_of if args.partitioned else None)
        compaction_s = time.perf_counter() - started
        compacted = timed_load(engine, now)
        engine.dispose()
    report({"benchmark": "restart_refill", "database": "sqlite" if url.startswith("sqlite") else "postgresql",
            "devices": args.devices, "only_partition": args.only_partition, "segments": "per partition" if args.partitioned else "whole fleet", "rows": rows, "compaction_s": round(compaction_s, 2),
            "uncompacted": uncompacted, "compacted": compacted, "machine": environment(),
            "command": " ".join(sys.argv)}, args.output)


if __name__ == "__main__":
    main()
