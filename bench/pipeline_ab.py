"""The fleet pipeline (bench/pipeline.py) of this tree against another, alternately, in one run.

One run of bench/pipeline.py on this shared machine moves by tens of percent with what else runs
(the bare responder's own ceiling varied 7,000-19,500 reports/s between days), so a change is
judged against the code before it in the same run: the trees alternate (before, this, this,
before, ...) and each side's medians are compared. The figure that moves least with the machine
is the CPU each process spends per report answered (``cpu_us_per_answer``: the service's own
process, its detection worker, its Mosquitto); latency and ceilings are reported too. ``--before``
is the ``src`` of another checkout (a ``git worktree`` of the commit before), put first on
``PYTHONPATH`` for the service that bench/pipeline.py starts; the fleet and the bare responder are
this tree's both times.

    git worktree add --detach /tmp/before <commit>
    .venv/bin/python bench/pipeline_ab.py --before /tmp/before/src [--pairs 2] [--devices 5000] [--rate 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one_run(src: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    """One bench/pipeline.py run (no reconnect storm), the service's code from ``src`` (None: this tree)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    with tempfile.TemporaryDirectory(prefix="iotdefender-ab-") as scratch:
        output = Path(scratch) / "result.json"
        subprocess.run([sys.executable, str(ROOT / "bench" / "pipeline.py"), "--devices", str(args.devices),
                        "--rate", str(args.rate), "--seconds", str(args.seconds), "--no-storm",
                        "--output", str(output)], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        result = json.loads(output.read_text())
    service, bare = result["service"], result["bare"]
    load = service["offered_load"]
    return {"answered_per_s": load["answered_per_s"], "rejected": load["rejected"], "lost": load["lost"],
            "p50_ms": load["p50_ms"], "p99_ms": load["p99_ms"], "cpu_us_per_answer": load["cpu_us_per_answer"],
            "ceiling_per_s": service["ceiling"]["answered_per_s"],
            "bare_ceiling_per_s": bare["ceiling"]["answered_per_s"], "ratio": result["ratio"],
            "load_average_1min": service["load_average_1min"]}


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(values: list[float]) -> float:
        return round(statistics.median(values), 1)
    figures = ("answered_per_s", "p50_ms", "p99_ms", "ceiling_per_s", "bare_ceiling_per_s", "ratio")
    return {**{f: median([r[f] for r in runs]) for f in figures},
            "cpu_us_per_answer": {role: median([r["cpu_us_per_answer"][role] for r in runs])
                                  for role in runs[0]["cpu_us_per_answer"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the src directory of the tree to compare with")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=3000.0,
                        help="offered reports/s: below both trees' ceilings, so that both answer the same load")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    trees: dict[str, Path | None] = {"before": args.before.resolve(), "this": None}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    order: list[str] = []
    for pair in range(args.pairs):
        for name in (("before", "this") if pair % 2 == 0 else ("this", "before")):
            runs[name].append(one_run(trees[name], args))
            order.append(name)
    result = {"machine": environment(), "command": " ".join(sys.argv), "order": order,
              "before_src": str(trees["before"]), "runs": runs,
              "median": {name: medians(side) for name, side in runs.items()}}
    before, this = result["median"]["before"]["cpu_us_per_answer"], result["median"]["this"]["cpu_us_per_answer"]
    result["this_over_before_cpu_per_answer"] = {role: round(this[role] / before[role], 3)
                                                 for role in before if before[role]}
    report(result, args.output, hidden=("machine", "command", "runs"))


if __name__ == "__main__":
    main()
