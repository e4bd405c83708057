"""A page of ListViolationEvents filtered by security profile or behavior, with and without their indexes.

``--events`` violation events over a week, spread over 20 profiles with 5 behaviors each, and one
rare profile (and behavior) with ``--rare`` events. A page of 25 of the rare profile's events in the
whole week, and of the rare behavior's, through the store's ``events_page`` (what the API and the
console call), with the indexes of migration 0022 dropped and created again in turns on the same
database; client wall time per page, medians. SQLite and PostgreSQL.

    .venv/bin/python bench/violation_filters.py [--events 200000] [--rare 50] [--repeats 5] [--output FILE]
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
from iotdefender.store import violations  # noqa: E402
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head  # noqa: E402
from iotdefender.store.schema import violation_events  # noqa: E402
from tests.support.processes import PostgresCluster  # noqa: E402

INDEXES = {"ix_violation_events_profile_time": ("profile_name", "event_time"),
           "ix_violation_events_behavior_time": ("behavior_name", "event_time")}
WEEK = 7 * 86400.0


def lay_down(engine: sa.Engine, events: int, rare: int) -> None:
    start = time.time() - WEEK
    rows = []
    for n in range(events):
        common = n >= rare
        profile = f"profile-{n % 20}" if common else "rare-profile"
        behavior = f"behavior-{n % 100}" if common else "rare-behavior"
        rows.append({"violation_id": f"v-{n // 2}", "event_type": "in-alarm" if n % 2 == 0 else "alarm-cleared",
                     "thing_name": f"device-{n % 50_000}", "profile_name": profile,
                     "behavior": {"name": behavior, "metric": "aws:num-messages-sent"},
                     "criteria_type": "STATIC", "suppressed": False, "metric_value": {"count": n % 97},
                     "event_time": start + WEEK * ((n * 7919) % events) / events, "evidence": {},
                     "behavior_name": behavior})
    with engine.begin() as conn:
        for chunk in range(0, len(rows), 10_000):
            conn.execute(violation_events.insert(), rows[chunk:chunk + 10_000])


def page_seconds(engine: sa.Engine, filters: violations.ViolationFilter) -> float:
    began = time.perf_counter()
    with engine.connect() as conn:
        violations.events_page(conn, filters, time.time() - WEEK - 60, time.time() + 60, None, 25, descending=True)
    return time.perf_counter() - began


def measure(engine: sa.Engine, events: int, rare: int, repeats: int) -> dict[str, Any]:
    upgrade_to_head(engine)
    lay_down(engine, events, rare)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("ANALYZE violation_events"))
    cases = {"profile": violations.ViolationFilter(profile_name="rare-profile"),
             "behavior": violations.ViolationFilter(behavior_name="rare-behavior")}
    times: dict[str, dict[str, list[float]]] = {case: {"without_index": [], "with_index": []} for case in cases}
    for _ in range(repeats):
        for indexed in (False, True):
            with engine.begin() as conn:
                for name, columns in INDEXES.items():
                    conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
                    if indexed:
                        conn.execute(sa.text(f"CREATE INDEX {name} ON violation_events ({', '.join(columns)})"))
            for case, filters in cases.items():
                page_seconds(engine, filters)  # the statement prepared, the pages cached alike
                times[case]["with_index" if indexed else "without_index"].append(page_seconds(engine, filters))
    out = {case: {kind: round(statistics.median(values) * 1000, 2) for kind, values in by_kind.items()}
           for case, by_kind in times.items()}
    print(engine.dialect.name, out, file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rare", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": environment(), "command": " ".join(sys.argv),
                              "load_average": list(os.getloadavg()[:2]), "events": args.events, "rare": args.rare,
                              "unit": "ms per page of 25 (median)"}
    postgres = PostgresCluster()
    postgres.start()
    try:
        result["postgresql"] = measure(create_engine(postgres.create_database("filters")), args.events, args.rare,
                                       args.repeats)
    finally:
        postgres.stop()
    result["sqlite"] = measure(create_engine(sqlite_url(Path(tempfile.mkdtemp(prefix="iotdefender-filters-")))),
                               args.events, args.rare, args.repeats)
    report(result, args.output)


if __name__ == "__main__":
    main()
