"""How long the first model build of a process stops its other threads (the service's event loop).

ML training's compiled loops import numba on their first call (engine/ml/kernels.py), which loads
llvmlite's LLVM library (~160 MB). Loaded by ``ctypes.CDLL`` the whole load holds the GIL; a
service at its first model build answered no report for 1.7-2.1 s (an outside-in run of the
README's ML recipe, two services side by side). Each tree given runs, in a fresh process per
repeat, the trees taking turns:

1. llvmlite's and numba's files are dropped from the page cache (``posix_fadvise`` DONTNEED), as
   on a service that has not trained since its machine started;
2. a thread sleeps 1 ms at a time and records the longest time between two of its wake-ups;
3. another thread does what the first call of a compiled loop does before compiling: the tree's
   preload if it has one (``kernels._load_llvm_without_the_gil``), then ``import numba``.

Printed (and written to ``--output``): per tree, the longest pause of the sleeping thread and the
wall time of step 3, each repeat and their median.

    .venv/bin/python bench/ml_first_import.py --trees . /tmp/before --repeats 7 \\
        --output bench/results/ml-first-import-<date>.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment, report, run_in_tree, tree_arguments, tree_revision  # noqa: E402


def _evict(package: str) -> int:
    """Drop every file of ``package`` from the page cache; returns how many files."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return 0
    files = [path for root in spec.submodule_search_locations for path in Path(root).rglob("*") if path.is_file()]
    for path in files:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)
    return len(files)


def worker() -> dict[str, float]:
    """One fresh process's measurement (steps 1-3 of the module's docstring)."""
    from iotdefender.engine.ml import kernels

    evicted = _evict("llvmlite") + _evict("numba")
    pauses: list[float] = []
    done = threading.Event()

    def sleeper() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            pauses.append(now - last)
            last = now

    def first_call() -> None:
        preload = getattr(kernels, "_load_llvm_without_the_gil", None)
        if preload is not None:
            preload()
        import numba  # noqa: F401

    watching = threading.Thread(target=sleeper)
    watching.start()
    time.sleep(0.05)
    started = time.perf_counter()
    loading = threading.Thread(target=first_call)
    loading.start()
    loading.join()
    wall = time.perf_counter() - started
    time.sleep(0.05)
    done.set()
    watching.join()
    return {"longest_pause_s": round(max(pauses), 4), "wall_s": round(wall, 3), "files_evicted": evicted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    tree_arguments(parser, repeats=7)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker()))
        return
    runs: dict[str, list[dict[str, float]]] = {str(tree): [] for tree in args.trees}
    for _ in range(args.repeats):
        for tree in args.trees:
            runs[str(tree)].append(run_in_tree(tree, __file__, ["go"]))
    result = {
        "benchmark": "ml_first_import",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "bench/ml_first_import.py " + " ".join(sys.argv[1:]), "machine": environment(),
        "trees": {tree: {"revision": tree_revision(Path(tree)),
                         "longest_pause_s_median": statistics.median(r["longest_pause_s"] for r in measured),
                         "wall_s_median": statistics.median(r["wall_s"] for r in measured),
                         "runs": measured} for tree, measured in runs.items()},
    }
    report(result, args.output)


if __name__ == "__main__":
    main()
