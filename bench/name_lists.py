"""Asking the database about a list of things: a parameter per name, or one array parameter.

``store/rows.name_among`` asks for a list of names in one parameter (PostgreSQL: ``= ANY(array)``,
SQLite: ``json_each`` of a JSON array); SQLAlchemy's ``IN`` renders a parameter per name, which
psycopg parses again at each execution past its statement cache. The same query
(``metric_values.load_report_states``: a detect node reads it for every thing of each transaction,
a broker node for every report it waits on five times a second) is timed both ways on the same
connection, taking turns, over a table of 20,000 things; the client process's CPU per call.

    .venv/bin/python bench/name_lists.py [--sizes 100 1000 5000] [--repeats 8] [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment, report  # noqa: E402
from iotdefender.store import metric_values  # noqa: E402
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head  # noqa: E402
from iotdefender.store.schema import thing_report_state  # noqa: E402
from tests.support.processes import PostgresCluster  # noqa: E402

THINGS = 20_000


def parameter_per_name(conn: sa.Connection, things: list[str]) -> dict[str, tuple[int, float]]:
    """The query as it was written before ``name_among``: ``IN`` with a parameter per name."""
    query = sa.select(thing_report_state.c.thing_name, thing_report_state.c.last_report_id,
                      thing_report_state.c.last_report_at).where(thing_report_state.c.thing_name.in_(things))
    return {t: (r, a) for t, r, a in conn.execute(query)}


def measure(engine: sa.Engine, sizes: list[int], repeats: int) -> dict[str, Any]:
    upgrade_to_head(engine)
    with engine.begin() as conn:
        conn.execute(thing_report_state.insert(), [{"thing_name": f"device-{n:07d}", "last_report_id": n,
                                                    "last_report_at": 1.0} for n in range(THINGS)])
    out: dict[str, Any] = {}
    for size in sizes:
        things = [f"device-{n:07d}" for n in range(0, THINGS, THINGS // size)]
        calls = max(1, 2000 // size)
        times: dict[str, list[float]] = {"parameter_per_name": [], "one_array_parameter": []}
        with engine.connect() as conn:
            assert parameter_per_name(conn, things) == metric_values.load_report_states(conn, things)
            for _ in range(repeats):
                for name, read in (("parameter_per_name", parameter_per_name),
                                   ("one_array_parameter", metric_values.load_report_states)):
                    began = time.process_time()
                    for _ in range(calls):
                        read(conn, things)
                    times[name].append((time.process_time() - began) / calls * 1000)
        medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
        out[str(size)] = {"client_cpu_ms_per_call": medians,
                          "ratio": round(medians["one_array_parameter"] / medians["parameter_per_name"], 3)}
        print(engine.dialect.name, size, out[str(size)], file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": environment(), "command": " ".join(sys.argv),
                              "load_average": list(os.getloadavg()[:2])}
    cluster = PostgresCluster()
    cluster.start()
    try:
        result["postgresql"] = measure(create_engine(cluster.create_database("namelists")), args.sizes, args.repeats)
    finally:
        cluster.stop()
    result["sqlite"] = measure(create_engine(sqlite_url(Path(tempfile.mkdtemp(prefix="iotdefender-names-")))),
                               args.sizes, args.repeats)
    report(result, args.output)


if __name__ == "__main__":
    main()
