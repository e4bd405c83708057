"""How long ``iotdefender serve`` takes from launch to a healthy ``/healthz``, against another tree.

A start imports the service (~1.4 s on an idle core), migrates, starts Mosquitto and listens; its
detection worker is a child started before the service imports itself (pipeline/worker_standby.py:
forked once the worker's modules are imported, so it imports nothing again). The test suite starts
the service a few hundred times, and a user restarting it waits for it. ``--before`` is the
``src`` of another checkout (e.g. a ``git worktree`` of the commit before); both trees start
alternately, so the ratio is of one run on this shared machine.

    git worktree add --detach /tmp/before <commit>
    .venv/bin/python bench/service_start.py --before /tmp/before/src [--starts 10] [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment, report  # noqa: E402
from tests.support.processes import ServiceProcess  # noqa: E402


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_start(src: Path) -> tuple[float, float, float]:
    """Seconds to healthy and to stopped of one start of the service from ``src``, and the CPU
    seconds of its processes (the service, its worker and Mosquitto: each waited for by its parent)."""
    os.environ["PYTHONPATH"] = str(src)  # before the editable install's path on sys.path
    data_dir = Path(tempfile.mkdtemp(prefix="iotdefender-start-"))
    service = ServiceProcess(data_dir=data_dir)
    cpu = children_cpu()
    try:
        began = time.perf_counter()
        service.start()
        healthy = time.perf_counter()
        service.stop()
        return healthy - began, time.perf_counter() - healthy, children_cpu() - cpu
    finally:
        service.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the src directory of the tree to compare with")
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    # The tests' setting (tests/conftest.py): bytecode cached outside the tree, not compiled at each start.
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
        os.environ.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "iotdefender-test-pycache"))
    trees = {"before": args.before.resolve(), "this": Path(__file__).resolve().parents[1] / "src"}
    for src in trees.values():
        one_start(src)  # warm the bytecode cache and the page cache
    seconds: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
    load = [os.getloadavg()[0]]
    for _ in range(args.starts):
        for name, src in trees.items():
            seconds[name].append(one_start(src))
    load.append(os.getloadavg()[0])
    result = {"machine": environment(), "command": " ".join(sys.argv), "load_average": load, "trees": {
        name: {"src": str(trees[name]),
               "to_healthy_s": {"median": round(statistics.median(s for s, _, _ in runs), 3),
                                "each": [round(s, 3) for s, _, _ in runs]},
               "to_stopped_s": {"median": round(statistics.median(s for _, s, _ in runs), 3)},
               "cpu_s_per_start_and_stop": {"median": round(statistics.median(c for _, _, c in runs), 3)}}
        for name, runs in seconds.items()}}
    for figure in ("to_healthy_s", "cpu_s_per_start_and_stop"):
        result[f"this_over_before_{figure}"] = round(result["trees"]["this"][figure]["median"]
                                                     / result["trees"]["before"][figure]["median"], 3)
    report(result, args.output)


if __name__ == "__main__":
    main()
