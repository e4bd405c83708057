"""What a detect node spends on what it holds of its devices when partitions move.

* The cloud-side window parts: a take-over resumes partitions (``WindowCollector.resume``), a node
  joining makes another release them (``released``), and every window is merged once
  (``merge_due``). These run on the event loop, so their time stalls every partition's reports.
* The evaluator's windows (behaviors over ``durationSeconds``): a partition given away is
  forgotten under the detection lock (``PartitionBatchStore.release_many``), which every
  partition's batches wait for; 32 partitions released one by one, then together.

No broker, database or network: parts of one open window and one window of datapoints for
``--devices`` devices spread over the 64 partitions.

    .venv/bin/python bench/partition_moves.py [--devices 100000] [--output PATH]

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
from bench.common import SetClock, environment  # noqa: E402
from iotdefender.cloud.aggregator import ClientWindow  # noqa: E402
from iotdefender.cloud.cluster_parts import StoredPart  # noqa: E402
from iotdefender.cloud.cluster_windows import WindowCollector  # noqa: E402
from iotdefender.cluster.partitions import PARTITION_COUNT, partition_of  # noqa: E402
from iotdefender.engine.evaluator import Evaluator  # noqa: E402
try:
    from iotdefender.engine.evaluator import HeldThings
except ImportError:  # a version before it: its releases asked about every thing under the lock
    HeldThings = None  # type: ignore[assignment,misc]
from iotdefender.pipeline.partition_store import PartitionBatchStore  # noqa: E402

WINDOW_S = 300.0


class Detection:
    """The part of ``DetectionService`` a release reaches: its evaluator's ``forget_things``."""

    def __init__(self, devices: int) -> None:
        self.evaluator = Evaluator(lambda: "id")
        self.partition_of = partition_of
        self.devices = devices
        self.fill()

    def fill(self) -> None:
        """Every device with one window of datapoints, as after a restart's refill."""
        windows = {f"device-{index:07d}": {"aws:all-bytes-out": [(1.0, 2.0)]} for index in range(self.devices)}
        self.evaluator.load_things(lambda thing: True, {}, windows)

    def give_up(self, owns: object) -> None:
        """As ``DetectionService.give_up``: listed, sorted, and dropped (no lock here)."""
        if HeldThings is None:
            self.evaluator.forget_things(owns)  # type: ignore[arg-type]
            return
        theirs = HeldThings.sorted_by(self.evaluator.things_held(), owns)  # type: ignore[arg-type]
        self.evaluator.forget_things(owns, theirs)  # type: ignore[arg-type]


def releases(devices: int) -> dict:
    detection = Detection(devices)
    store = PartitionBatchStore(None, detection, lambda events: None)  # type: ignore[arg-type]
    half = range(PARTITION_COUNT // 2)
    started = time.perf_counter()
    for partition in half:
        store.release(partition)
    one_by_one = time.perf_counter() - started
    detection.fill()
    started = time.perf_counter()
    if hasattr(store, "release_many"):
        store.release_many(list(half))
    together = time.perf_counter() - started if hasattr(store, "release_many") else None
    return {"release_32_evaluator_partitions_one_by_one_s": round(one_by_one, 3),
            "release_32_evaluator_partitions_together_s": None if together is None else round(together, 3)}


def measure(devices: int) -> dict:
    clock = SetClock(1_000_000 * WINDOW_S + 10)
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
    result = {"benchmark": "partition_moves", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "command": " ".join(sys.argv), "machine": environment(), **measure(args.devices),
              **releases(args.devices)}
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key != "machine"}))
    return result


if __name__ == "__main__":
    main()
