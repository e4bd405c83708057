"""A detect node's takeover of one partition, timed for several source trees in one run.

The fleet of bench/restart_refill.py (an hour of a device-side and a cloud-side metric summed over
``durationSeconds`` 3600, one report and one cloud window per device every 300 s), of which only
partition 0's devices are stored (``--only-partition 0``: at ``--devices 10000000`` that is a
partition's share of 10M devices, 155,637 devices and 3.7M rows), with their rows and segments
per partition as a cluster writes them, the hour compacted. Then ``DetectionService.take_over``
of partition 0 by a node holding nothing (as after a kill), in a fresh process per timing, the
trees taking turns (``--tree`` is each tree's ``src``: e.g. a ``git worktree`` of an earlier
commit), so their ratio is of one run on this shared machine.

    git worktree add --detach /tmp/before <commit>
    .venv/bin/python bench/takeover_pair.py --tree /tmp/before/src --tree src [--devices 10000000]
        [--repeats 3] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment, report  # noqa: E402
from bench.restart_refill import ARN, INTERVAL, lay_down  # noqa: E402
from iotdefender.cluster.partitions import partition_of  # noqa: E402
from iotdefender.store import history  # noqa: E402
from iotdefender.store.database import create_engine, upgrade_to_head  # noqa: E402
from tests.support.processes import PostgresCluster  # noqa: E402

# One timing, in a process whose PYTHONPATH names the tree under test.
TAKE_OVER = """
import json, sys, time
from iotdefender.alerts.routes import AlertRoutes
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.store.database import create_engine
url, now, arn = sys.argv[1], float(sys.argv[2]), sys.argv[3]
engine = create_engine(url)
node = DetectionService(engine, MonitoringIndex(engine, arn), AlertRoutes(), 2 * 86400.0, clock=lambda: now)
started = time.perf_counter()
node.take_over(lambda conn: {0})
took = time.perf_counter() - started
held = node.evaluator._history
print(json.dumps({"take_over_s": round(took, 3), "things": len(held),
                  "datapoints": sum(len(p) for s in held.values() for p in s.values())}))
"""


def timed(tree: str, url: str, now: float) -> dict:  # type: ignore[type-arg]
    env = {**os.environ, "PYTHONPATH": tree}
    done = subprocess.run([sys.executable, "-c", TAKE_OVER, url, str(now), ARN], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def commit_of(tree: str) -> str | None:
    done = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, help="a tree's src directory (repeat)")
    parser.add_argument("--devices", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    server = PostgresCluster()
    server.start()
    try:
        url = server.create_database("takeover")
        engine = create_engine(url)
        upgrade_to_head(engine)
        now = float(int(time.time() // INTERVAL) * INTERVAL) + 1.0
        rows = lay_down(engine, args.devices, now, only_partition=0, partitioned=True)
        started = time.perf_counter()
        history.compact_until(engine, history.max_row_id(engine.connect()), partition_of)
        compaction_s = time.perf_counter() - started
        engine.dispose()
        runs: dict[str, list[dict]] = {tree: [] for tree in args.tree}  # type: ignore[type-arg]
        for _ in range(args.repeats):
            for tree in args.tree:
                runs[tree].append(timed(tree, url, now))
                print(tree, runs[tree][-1], flush=True)
    finally:
        server.stop()
    report({"benchmark": "takeover_pair", "devices": args.devices, "only_partition": 0, "rows": rows,
            "compaction_s": round(compaction_s, 2),
            "load_average_after": os.getloadavg(),
            "trees": {tree: {"commit": commit_of(tree), "take_over_s": [r["take_over_s"] for r in found],
                             "median_s": statistics.median(r["take_over_s"] for r in found),
                             "things": found[0]["things"], "datapoints": found[0]["datapoints"]}
                      for tree, found in runs.items()},
            "machine": environment(), "command": " ".join(sys.argv)}, args.output)


if __name__ == "__main__":
    main()
