"""What a detect node spends following where each device's connection is (cluster mode).

A detect node follows, for every device with a part in a window, the broker node its connection is
on (``WindowCollector._follow_connections``, in the closing thread at each window's close), so that
the devices of a broker node that is killed count as disconnected (``_connections_lost``, once per
node that dies). This measures both, in one process, against the work every close did already for
the same devices (merging each device's parts, ``_merged``), so the added cost is a ratio measured
in one run: ``--devices`` devices with one part each (one message sent, through one of two broker
nodes), ``--repeats`` times, medians.

    .venv/bin/python bench/connection_follow.py [--devices 200000] [--repeats 5] [--output PATH]

Writes bench/results/connection-follow-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SetClock, bounded, environment  # noqa: E402
from iotdefender.cloud.aggregator import ClientWindow  # noqa: E402
from iotdefender.cloud.cluster_windows import WindowCollector, _merged  # noqa: E402
from iotdefender.cloud.window_ends import End  # noqa: E402
from iotdefender.cluster.partitions import PARTITION_COUNT, partition_of  # noqa: E402

RESULTS = Path(__file__).with_name("results")
WINDOW_S = 300.0
WINDOW = 1_000_000


def held_parts(devices: int) -> list[dict[str, dict[str, ClientWindow]]]:
    """Each partition's parts of one window, by thing and publisher: a device that sent one
    message, on node-a or node-b by turns (as ``merge_due`` hands them to the close)."""
    by_partition: dict[int, dict[str, dict[str, ClientWindow]]] = {}
    for index in range(devices):
        thing = f"device-{index:07d}"
        part = ClientWindow(sent={"telemetry": 1}, sent_max_bytes={"telemetry": 200},
                            sent_min_bytes={"telemetry": 200}, address=f"10.{index % 250}.0.1")
        by_partition.setdefault(partition_of(thing), {})[thing] = {("node-a", "node-b")[index % 2]: part}
    return list(by_partition.values())


def one_round(devices: int) -> dict[str, float]:
    collector = WindowCollector(None, None, lambda events: None,  # type: ignore[arg-type]
                                lambda: {p: 1 for p in range(PARTITION_COUNT)}, WINDOW_S, None,  # type: ignore[arg-type]
                                clock=SetClock((WINDOW + 1) * WINDOW_S))
    parts = held_parts(devices)
    started = time.perf_counter()
    clients = {thing: _merged(by_node) for held in parts for thing, by_node in held.items()}
    merge_s = time.perf_counter() - started
    started = time.perf_counter()
    collector._follow_connections(clients, parts, {})
    follow_s = time.perf_counter() - started
    assert len(collector._via) == devices
    for partition in range(PARTITION_COUNT):  # node-b vouched last for the window before: now gone
        collector.ends.record(partition, End("node-b", WINDOW - 5, WINDOW - 5, WINDOW - 1, hosts=True))
    started = time.perf_counter()
    lost = collector._connections_lost({partition: WINDOW + 1 for partition in range(PARTITION_COUNT)}, set())
    lost_s = time.perf_counter() - started
    assert len(lost) == devices // 2, len(lost)
    return {"merge_s": merge_s, "follow_s": follow_s, "lost_s": lost_s}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--max-seconds", type=int, default=600)
    args = parser.parse_args(argv)
    bounded(args.max_seconds)
    started = datetime.datetime.now(datetime.timezone.utc)
    rounds = [one_round(args.devices) for _ in range(args.repeats)]
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    result: dict[str, Any] = {
        "benchmark": "connection_follow", "date": started.isoformat(), "command": " ".join(sys.argv),
        "machine": environment(), "load_average": os.getloadavg(), "devices": args.devices,
        "rounds": [{key: round(value, 4) for key, value in r.items()} for r in rounds],
        "median_us_per_device": {key: round(value / args.devices * 1e6, 3) for key, value in median.items()},
        "follow_to_merge": round(median["follow_s"] / median["merge_s"], 2)}
    output = args.output or RESULTS / f"connection-follow-{started:%Y-%m-%d}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("devices", "median_us_per_device", "follow_to_merge")}))
    return result


if __name__ == "__main__":
    main()
