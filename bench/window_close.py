"""Closing a cloud-side window over a registered fleet: what the registry costs at each window's end.

Every registered device gets each window's cloud-side datapoints (an idle one its 0), so closing a
window reads which devices are registered and each device's profiles. A PostgreSQL database holds
``--things`` registered things (attributes as a real fleet has them) and a cloud-side profile on
all things; a ``--seen`` of them connected in the window. Each run starts a fresh service process
of the tree under test (its monitoring cache cold, as after any change of the control plane such as
a CreateThing), closes one 5-minute window through ``CloudMetricsService.close_due`` with the real
store, and reports the wall and CPU time of the close. Trees take turns (``--trees``: this one and,
say, a worktree of the code before), each run on a window of its own.

    .venv/bin/python bench/window_close.py --trees . /tmp/before [--things 20000 100000] [--seen 1000]
        [--repeats 2] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import environment, report, run_in_tree, tree_arguments, tree_revision  # noqa: E402
WINDOW_S = 300.0
ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"


def close_once(url: str, window: int, seen: int) -> dict[str, Any]:
    from iotdefender.alerts.routes import AlertRoutes
    from iotdefender.cloud.service import CloudMetricsService
    from iotdefender.pipeline.batch_store import ignore_events
    from iotdefender.pipeline.detection import DetectionService
    from iotdefender.pipeline.local_store import LocalBatchStore
    from iotdefender.pipeline.monitoring import MonitoringIndex
    from iotdefender.service import build_api
    from iotdefender.settings import Settings

    with tempfile.TemporaryDirectory() as data_dir:
        api = build_api(Settings(data_dir=Path(data_dir), database_url=url))
        engine = api.context.engine
        monitoring = MonitoringIndex(engine, api.context.arn(""))
        detection = DetectionService(engine, monitoring, AlertRoutes(), 172800.0)
        detection.load()
        store = LocalBatchStore(engine, monitoring, detection, ignore_events)
        now = [window * WINDOW_S + 10]
        cloud = CloudMetricsService(engine, monitoring, store, window_s=WINDOW_S, clock=lambda: now[0])
        for n in range(seen):
            cloud.connect_attempt(f"device-{n:08d}", "10.0.0.1", True)
        now[0] = (window + 1) * WINDOW_S + 1
        wall, cpu = time.perf_counter(), time.process_time()
        done = cloud.close_due()
        result = {"devices_stored": done, "wall_s": round(time.perf_counter() - wall, 2),
                  "cpu_s": round(time.process_time() - cpu, 2)}
        engine.dispose()
    return result


def lay_down(url: str, things: int) -> None:
    """The fleet's registry, inserted directly (CreateThing one by one would take longer than the runs)."""
    import sqlalchemy as sa

    from iotdefender.service import build_api
    from iotdefender.settings import Settings
    from iotdefender.store.schema import things as table

    with tempfile.TemporaryDirectory() as data_dir:
        api = build_api(Settings(data_dir=Path(data_dir), database_url=url))
        api.invoke("CreateSecurityProfile", {"securityProfileName": "cloud", "behaviors": [
            {"name": "attempts", "metric": "aws:num-connection-attempts",
             "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 100}}}]})
        api.invoke("AttachSecurityProfile", {"securityProfileName": "cloud", "securityProfileTargetArn": ALL_THINGS})
        engine: sa.Engine = api.context.engine
        for start in range(0, things, 10_000):
            with engine.begin() as conn:
                conn.execute(table.insert(), [
                    {"name": f"device-{n:08d}", "thing_id": f"id-{n}",
                     "arn": f"arn:aws:iot:us-east-1:123456789012:thing/device-{n:08d}", "thing_type_name": None,
                     "attributes": {"model": "gw-2", "site": f"site-{n % 97}", "firmware": "4.1.7"},
                     "version": 1, "creation_date": 1.0} for n in range(start, min(things, start + 10_000))])
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--things", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--seen", type=int, default=1000)
    tree_arguments(parser, repeats=2)
    args = parser.parse_args()
    if args.worker:
        kind, url, number, seen = args.worker
        if kind == "lay-down":
            lay_down(url, int(number))
            print(json.dumps({}))
        else:
            print(json.dumps(close_once(url, int(number), int(seen))))
        return

    from tests.support.processes import PostgresCluster

    trees = {str(tree): tree for tree in args.trees}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in trees}
    postgres = PostgresCluster()
    postgres.start()
    window = int(time.time() // WINDOW_S) - 10_000
    try:
        for things in args.things:
            url = postgres.create_database(f"close{things}")
            run_in_tree(ROOT, __file__, ["lay-down", url, str(things), "0"])
            for _ in range(args.repeats):
                for name, tree in trees.items():
                    window += 1
                    measured = run_in_tree(tree, __file__, ["close", url, str(window), str(args.seen)])
                    runs[name].setdefault(str(things), []).append(measured)
                    print(name, things, measured, file=sys.stderr, flush=True)
    finally:
        postgres.stop()
    summary = {name: {things: {field: statistics.median(run[field] for run in done)
                               for field in ("devices_stored", "wall_s", "cpu_s")}
                      for things, done in measured_runs.items()}
               for name, measured_runs in runs.items()}
    report({"machine": environment(), "command": " ".join(sys.argv), "load_average": list(os.getloadavg()[:2]),
            "trees": {name: tree_revision(tree) for name, tree in trees.items()},
            "summary": summary, "runs": runs}, args.output)


if __name__ == "__main__":
    main()
