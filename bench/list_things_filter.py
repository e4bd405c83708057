"""ListThings with an attribute filter over a large registry: a page of a rare match.

``--things`` registered things with three attributes each (``bench/window_close.py``'s fleet), one of
them with a rare site; ListThings ``attributeName=site, attributeValue=<rare>`` through the
operation's handler (``--value-only``: ``attributeValue=<rare>`` alone, any attribute's), in fresh processes of each tree taking turns (``--trees``: this one and, say,
a worktree of the code before, which filtered every row in Python); wall and CPU time per call,
medians. PostgreSQL and SQLite.

    .venv/bin/python bench/list_things_filter.py --trees . /tmp/before [--things 200000] [--repeats 3]
        [--value-only] [--output FILE]
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

RARE = "site-rare"


def call(url: str, value_only: bool = False) -> dict[str, Any]:
    from iotdefender.controlplane.context import ServiceContext
    from iotdefender.controlplane.things import list_things
    from iotdefender.store.database import create_engine

    context = ServiceContext(engine=create_engine(url), region="us-east-1", account_id="123456789012")
    params = {"attributeValue": RARE, "maxResults": 25} if value_only else {
        "attributeName": "site", "attributeValue": RARE, "maxResults": 25}
    list_things(context, params)  # connections and statements warmed alike
    wall, cpu = time.perf_counter(), time.process_time()
    found = list_things(context, params)
    return {"wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(time.process_time() - cpu, 3),
            "found": len(found["things"])}


def lay_down(url: str, things: int) -> None:
    import sqlalchemy as sa

    from bench.window_close import lay_down as fleet
    from iotdefender.store.database import create_engine
    from iotdefender.store.schema import things as table

    fleet(url, things)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(table.update().where(table.c.name == f"device-{things // 2:08d}")
                     .values(attributes={"model": "gw-2", "site": RARE, "firmware": "4.1.7"}))
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("ANALYZE things"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--things", type=int, default=200_000)
    parser.add_argument("--value-only", action="store_true", help="filter by the value alone (no attributeName)")
    tree_arguments(parser, repeats=3)
    args = parser.parse_args()
    if args.worker:
        kind, url, *rest = args.worker
        if kind == "lay-down":
            lay_down(url, int(rest[0]))
            print(json.dumps({}))
        else:
            print(json.dumps(call(url, value_only=rest == ["value-only"])))
        return

    from tests.support.processes import PostgresCluster

    trees = {str(tree): tree for tree in args.trees}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in trees}
    postgres = PostgresCluster()
    postgres.start()
    try:
        urls = {"postgresql": postgres.create_database("listthings"),
                "sqlite": f"sqlite:///{Path(tempfile.mkdtemp(prefix='iotdefender-list-')) / 'iotdefender.db'}"}
        for backend, url in urls.items():
            run_in_tree(ROOT, __file__, ["lay-down", url, str(args.things)])
            for _ in range(args.repeats):
                for name, tree in trees.items():
                    measured = run_in_tree(tree, __file__, ["call", url, *(["value-only"] if args.value_only else [])])
                    runs[name].setdefault(backend, []).append(measured)
                    print(name, backend, measured, file=sys.stderr, flush=True)
    finally:
        postgres.stop()
    summary = {name: {backend: {field: statistics.median(run[field] for run in done) for field in ("wall_s", "cpu_s", "found")}
                      for backend, done in by_backend.items()} for name, by_backend in runs.items()}
    report({"machine": environment(), "command": " ".join(sys.argv), "load_average": list(os.getloadavg()[:2]),
            "things": args.things, "value_only": args.value_only, "trees": {name: tree_revision(tree) for name, tree in trees.items()},
            "summary": summary, "runs": runs}, args.output)


if __name__ == "__main__":
    main()
