"""What a detect node's event loop spends on the cloud-side window parts it holds when partitions
move: a take-over resumes partitions (``WindowCollector.resume``), a node joining makes another
release them (``released``), and every window is merged once (``merge_due``). These run on the
loop, so their time is a stall of every partition's reports on the node.

No broker, database or network: parts of one open window for ``--devices`` devices spread over the
64 partitions, as a node holds them between two windows.

    .venv/bin/python bench/window_parts.py [--devices 100000] [--output PATH]

Compare two versions by running it with each one's ``src`` first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment  # noqa: E402
from iotdefender.cloud.aggregator import ClientWindow  # noqa: E402
from iotdefender.cloud.cluster_parts import StoredPart  # noqa: E402
from iotdefender.cloud.cluster_windows import WindowCollector  # noqa: E402
from iotdefender.cluster.partitions import PARTITION_COUNT, partition_of  # noqa: E402

WINDOW_S = 300.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def measure(devices: int) -> dict:
    clock = Clock(1_000_000 * WINDOW_S + 10)
    owned = {partition: 1 for partition in range(PARTITION_COUNT)}
    # Only the parts' bookkeeping runs here: no detection, monitoring or database is reached.
    collector = WindowCollector(None, None, lambda events: None, lambda: owned,  # type: ignore[arg-type]
                                WINDOW_S, None, clock=clock, ends_in_use=lambda: False)  # type: ignore[arg-type]
    window = int((clock() - collector.grace_s) // WINDOW_S)
    parts: dict[int, list[StoredPart]] = {}
    for index in range(devices):
        thing = f"device-{index:07d}"
        parts.setdefault(partition_of(thing), []).append(StoredPart(window, thing, "node-a", ClientWindow()))
    half = range(PARTITION_COUNT // 2)

    started = time.perf_counter()
    for partition in range(PARTITION_COUNT):
        collector.resume(partition, None, parts.get(partition, []))
    resumed_all = time.perf_counter() - started
    started = time.perf_counter()
    for partition in half:
        collector.released(partition)
    released_half = time.perf_counter() - started
    started = time.perf_counter()
    for partition in half:
        collector.resume(partition, None, parts.get(partition, []))
    resumed_half = time.perf_counter() - started
    clock.now = (window + 1) * WINDOW_S + collector.grace_s + 0.1
    started = time.perf_counter()
    closings = collector.merge_due()
    merged = time.perf_counter() - started
    assert sum(len(closing[2]) for closing in closings) == devices, "every device's part is merged once"
    return {"devices": devices, "resume_64_partitions_s": round(resumed_all, 3),
            "release_32_partitions_s": round(released_half, 3), "resume_32_partitions_s": round(resumed_half, 3),
            "merge_one_window_s": round(merged, 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    result = {"benchmark": "window_parts", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "command": " ".join(sys.argv), "machine": environment(), **measure(args.devices)}
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key != "machine"}))
    return result


if __name__ == "__main__":
    main()
