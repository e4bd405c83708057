"""A detect node's share of the registry at a window's close: the whole registry, or its partitions'.

A cluster's detect node closing cloud-side windows needs the registered names of its own partitions
(every registered device gets its datapoints, an idle one its 0). It read every registered name and
hashed each to its partition; the registry now keeps each thing's partition (migration 0021), which
the detect nodes fill in a bounded number a round (``registry.record_partitions``). On PostgreSQL
with ``--things`` registered things, the client process's CPU and the wall time of: reading every
name and keeping a node's share by hashing (before) and reading the share by partition (after),
taking turns, medians, once every partition is recorded (timed too: once, in rounds of 100,000),
for a node owning ``--owned`` of the 64 partitions.

    .venv/bin/python bench/registry_share.py [--things 1000000] [--owned 2] [--repeats 5] [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import environment, report  # noqa: E402
from bench.window_close import lay_down  # noqa: E402
from iotdefender.cluster.partitions import PARTITION_COUNT, partition_of  # noqa: E402
from iotdefender.store import registry  # noqa: E402
from iotdefender.store.database import create_engine, writing  # noqa: E402
from iotdefender.store.partition_selection import PartitionSelection  # noqa: E402
from tests.support.processes import PostgresCluster  # noqa: E402


def timed(action: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = action()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--things", type=int, default=1_000_000)
    parser.add_argument("--owned", type=int, default=2, help="partitions the node owns, of 64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    postgres = PostgresCluster()
    postgres.start()
    try:
        url = postgres.create_database("share")
        lay_down(url, args.things)
        engine = create_engine(url)
        mine = PartitionSelection(frozenset(range(0, PARTITION_COUNT, PARTITION_COUNT // args.owned)), partition_of)

        def whole_then_hashed() -> set[str]:
            with engine.connect() as conn:
                return {name for name in registry.thing_names(conn) if mine(name)}

        def by_partition() -> set[str]:
            with engine.connect() as conn:
                return registry.thing_names(conn, mine)

        def record_all() -> int:
            done = 0
            while True:
                with writing(engine) as conn:
                    recorded = registry.record_partitions(conn, partition_of, 100_000)
                done += recorded
                if not recorded:
                    return done

        recorded, record_wall, record_cpu = timed(record_all)
        before: list[tuple[float, float]] = []
        after: list[tuple[float, float]] = []
        for _ in range(args.repeats):
            share, wall, cpu = timed(whole_then_hashed)
            before.append((wall, cpu))
            found, wall, cpu = timed(by_partition)
            after.append((wall, cpu))
            assert found == share
        engine.dispose()
    finally:
        postgres.stop()
    result = {"machine": environment(), "command": " ".join(sys.argv), "load_average": list(os.getloadavg()[:2]),
              "things": args.things, "owned_partitions": args.owned, "share": len(share),
              "whole_registry_hashed": {"wall_s": round(statistics.median(w for w, _ in before), 3),
                                        "cpu_s": round(statistics.median(c for _, c in before), 3)},
              "recording_every_partition_once": {"things": recorded, "wall_s": round(record_wall, 2),
                                                 "cpu_s": round(record_cpu, 2)},
              "by_partition": {"wall_s": round(statistics.median(w for w, _ in after), 3),
                               "cpu_s": round(statistics.median(c for _, c in after), 3)}}
    report(result, args.output)


if __name__ == "__main__":
    main()
