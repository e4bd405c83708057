"""What a detect node's process spends on each device's cloud part at a window's end.

At a window's end a broker node publishes its part of every device's window, and each partition's
detect node decodes, checks, keeps (in PostgreSQL) and holds them while its reports keep coming:
the reports wait for the process's turns (bench/window_end_reports.py). This measures that work
alone, as CPU-seconds of the process (every thread: the event loop's and the keeping worker's):
one broker node's parts of ``--devices`` devices, already received (no NATS: the reading is
measured by window_end_reports.py), handed to ``WindowCollector.aside()`` as the partitions'
readers hand them (every partition's call at once), kept in a fresh PostgreSQL (fsync on, on
loopback) through the collector's group commit, and held.

Each round is a new window, kept and held on top of the rounds before (the parts of one window
are ~18 MB a window at 200,000 devices). The first round warms the caches and is not counted.

    .venv/bin/python bench/window_parts_cpu.py [--devices 200000] [--rounds 6] [--output PATH]

Runs on a tree from before too (``PYTHONPATH=<tree>/src``), for a comparison in one sitting.
Writes bench/results/window-parts-cpu-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SetClock, bounded, environment, migrated_and_owned  # noqa: E402
from iotdefender.cloud.aggregator import ClientWindow  # noqa: E402
from iotdefender.cloud.cluster_windows import CloudWindowParts, DevicePart, WindowCollector, encode  # noqa: E402
from iotdefender.cluster.partitions import PARTITION_COUNT, partition_of  # noqa: E402
from iotdefender.cluster.report_stream import Delivery  # noqa: E402
from tests.support.processes import PostgresCluster  # noqa: E402

RESULTS = Path(__file__).with_name("results")
WINDOW_S = 300.0
FIRST_WINDOW = 1_000_000
TOKEN = 1
PER_MESSAGE = 1000  # what a broker node batches (cluster_windows.PARTS_PER_MESSAGE)


def deliveries(devices: int, window: int) -> dict[int, list[Delivery]]:
    """One broker node's parts of ``window``: a device that sent one message, as most do."""
    things: dict[int, list[DevicePart]] = {}
    for index in range(devices):
        thing = f"device-{index:07d}"
        part = ClientWindow(sent={"telemetry": 1}, sent_max_bytes={"telemetry": 200},
                            sent_min_bytes={"telemetry": 200})
        things.setdefault(partition_of(thing), []).append(DevicePart(thing, part))
    return {partition: [Delivery(partition, "", encode(CloudWindowParts("node-a", partition, window, WINDOW_S,
                                                                        parts[start:start + PER_MESSAGE])),
                                 start + 1, 1)
                        for start in range(0, len(parts), PER_MESSAGE)]
            for partition, parts in things.items()}


async def rounds(engine: Any, devices: int, count: int) -> list[dict[str, float]]:
    clock = SetClock((FIRST_WINDOW + 1) * WINDOW_S + 0.5)  # the first window just ended; none closes here
    collector = WindowCollector(None, None, lambda events: None,  # type: ignore[arg-type]
                                lambda: {p: TOKEN for p in range(PARTITION_COUNT)}, WINDOW_S, engine, clock=clock)
    for partition in range(PARTITION_COUNT):
        collector.acquire(partition)
    keep = collector.aside().handler
    measured = []
    for number in range(count):
        window = FIRST_WINDOW + number
        prepared = deliveries(devices, window)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(keep(partition, TOKEN, batch) for partition, batch in prepared.items()))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        held = sum(len(collector._parts.get(partition, {}).get(window, {})) for partition in range(PARTITION_COUNT))
        assert held == devices, f"held {held} of {devices}"
        measured.append({"cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                         "cpu_us_per_part": round(cpu / devices * 1e6, 2)})
        print(json.dumps(measured[-1]), flush=True)
    return measured[1:]


def run(devices: int, count: int) -> dict[str, Any]:
    postgres = PostgresCluster()
    postgres.start()
    try:
        url, engine = migrated_and_owned(postgres, "partscpu", TOKEN)
        measured = asyncio.run(rounds(engine, devices, count))
        engine.dispose()
    finally:
        postgres.stop()
    per_part = [one["cpu_us_per_part"] for one in measured]
    return {"devices": devices, "rounds": measured, "cpu_us_per_part_median": statistics.median(per_part),
            "cpu_us_per_part_min": min(per_part)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=6, help="windows kept; the first is not counted")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--max-seconds", type=int, default=900)
    args = parser.parse_args(argv)
    bounded(args.max_seconds)
    started = datetime.datetime.now(datetime.timezone.utc)
    result = {"benchmark": "window_parts_cpu", "date": started.isoformat(), "command": " ".join(sys.argv),
              "machine": environment(), "load_average_before": os.getloadavg(),
              **run(args.devices, max(2, args.rounds)), "load_average_after": os.getloadavg()}
    output = args.output or RESULTS / f"window-parts-cpu-{started:%Y-%m-%d}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("devices", "cpu_us_per_part_median", "cpu_us_per_part_min")}))
    return result


if __name__ == "__main__":
    main()
