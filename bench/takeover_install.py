"""What a takeover, and a release, hold the detection lock for on a node that holds many things.

A detect node taking a partition over replaces whatever it held of that partition's things
(``Evaluator.load_things``); one giving partitions up (a node joined) forgets them
(``forget_things``). Asked under the lock about every thing it holds (a BLAKE2b hash of the name
each), either pass stopped the node's other partitions for about a second at a 10M fleet's
per-node share. ``DetectionService.take_over`` and ``give_up`` now list the held things under the
lock and sort them outside it (``HeldThings``); a release also asks, under the lock again, about
the things added since the listing (a set difference). Both paths are in the code, so one run
times them alternately on the same machine.

The evaluator is filled through ``load`` with one window per thing (what a node evaluating
``durationSeconds`` behaviors holds). The things are of every partition and partition 0 is taken, so
its ~1/64 of them are dropped (a partition taken back); what costs is the number of things held.

    .venv/bin/python bench/takeover_install.py [--held 470000] [--repeats 5] [--output FILE]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment, report  # noqa: E402
from iotdefender.cluster.partitions import partition_of  # noqa: E402
from iotdefender.engine.evaluator import Evaluator, HeldThings  # noqa: E402
from iotdefender.store.partition_selection import PartitionSelection  # noqa: E402


def holding(things: list[str]) -> Evaluator:
    ids = itertools.count()
    evaluator = Evaluator(lambda: str(next(ids)))
    evaluator.load({}, {thing: {"aws:all-bytes-out": [(1.0, 2.0)]} for thing in things})
    return evaluator


def asked_under_the_lock(evaluator: Evaluator, selection: PartitionSelection) -> tuple[float, float]:
    started = time.perf_counter()
    evaluator.load_things(selection, {}, None)
    return time.perf_counter() - started, 0.0


def filtered_outside(evaluator: Evaluator, selection: PartitionSelection) -> tuple[float, float]:
    started = time.perf_counter()
    held = evaluator.things_held()  # under the lock, at the claim
    listed = time.perf_counter() - started
    started = time.perf_counter()
    stale = HeldThings.sorted_by(held, selection, may_have_grown=False)
    outside = time.perf_counter() - started
    started = time.perf_counter()
    evaluator.load_things(selection, {}, None, held=stale, selected=True)
    return listed + time.perf_counter() - started, outside


def given_up_under_the_lock(evaluator: Evaluator, selection: PartitionSelection) -> tuple[float, float]:
    started = time.perf_counter()
    evaluator.forget_things(selection)
    return time.perf_counter() - started, 0.0


def given_up_sorted_outside(evaluator: Evaluator, selection: PartitionSelection) -> tuple[float, float]:
    """``DetectionService.give_up``: listed under the lock, sorted outside, dropped under it with
    the things added since asked about (none here: the difference is what is timed)."""
    started = time.perf_counter()
    listed = evaluator.things_held()
    first = time.perf_counter() - started
    started = time.perf_counter()
    theirs = HeldThings.sorted_by(listed, selection)
    outside = time.perf_counter() - started
    started = time.perf_counter()
    evaluator.forget_things(selection, theirs)
    return first + time.perf_counter() - started, outside


PATHS = {"asked_under_the_lock": asked_under_the_lock, "filtered_outside": filtered_outside,
         "given_up_under_the_lock": given_up_under_the_lock, "given_up_sorted_outside": given_up_sorted_outside}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held", type=int, default=470_000, help="things the node holds (a 10M fleet's share: ~470k)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("results") / "takeover-install.json")
    args = parser.parse_args()
    things = [f"device-{n:07d}" for n in range(args.held)]
    selection = PartitionSelection(frozenset({0}), partition_of)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in PATHS}
    for _ in range(args.repeats):
        for name, install in PATHS.items():
            runs[name].append(install(holding(things), selection))
    result = {"machine": environment(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "held_things": args.held, "taken_partition_held_things": sum(1 for t in things if selection(t)),
              "repeats": args.repeats}
    for name, timings in runs.items():
        result[name] = {"under_lock_s": [round(u, 3) for u, _ in timings],
                        "outside_lock_s": [round(o, 3) for _, o in timings],
                        "under_lock_median_s": round(statistics.median(u for u, _ in timings), 3)}
    report(result, args.output)


if __name__ == "__main__":
    main()
