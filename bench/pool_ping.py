"""What a ping at every pool checkout costs a short transaction on real PostgreSQL (store/idle_ping.py).

One engine pings at every checkout (``ping_after_idle_s=0``: what ``pool_pre_ping`` did), the other
only after 1 s idle (the default); both run the same one-statement transaction back to back,
in alternating blocks (this machine is shared: alternation spreads its other load over both).
Prints the median milliseconds per transaction of each and their difference.

    PYTHONPATH=src .venv/bin/python bench/pool_ping.py [--transactions 4000] [--block 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import bounded, environment, report  # noqa: E402
from iotdefender.store.database import create_engine, writing  # noqa: E402
from tests.support.processes import PostgresCluster  # noqa: E402


def block(engine: sa.Engine, count: int) -> float:
    """Seconds per transaction over ``count`` transactions."""
    started = time.perf_counter()
    for _ in range(count):
        with writing(engine) as conn:
            # A read: a write's COMMIT waits for the WAL flush (~6 ms on this disk), which hides
            # the round trip measured here.
            conn.execute(sa.text("SELECT token FROM fence WHERE partition = 1")).scalar_one()
    return (time.perf_counter() - started) / count


def run(args: argparse.Namespace) -> dict[str, Any]:
    postgres = PostgresCluster()
    postgres.start()
    try:
        url = postgres.create_database("ping")
        engines = {"ping_every_checkout": create_engine(url, ping_after_idle_s=0.0),
                   "ping_after_1s_idle": create_engine(url)}
        with writing(engines["ping_after_1s_idle"]) as conn:
            conn.execute(sa.text("CREATE TABLE fence (partition int PRIMARY KEY, token bigint)"))
            conn.execute(sa.text("INSERT INTO fence VALUES (1, 0)"))
        per: dict[str, list[float]] = {name: [] for name in engines}
        for engine in engines.values():
            block(engine, args.block)  # warm: connections open, statements cached
        for _ in range(args.transactions // args.block):
            for name, engine in engines.items():
                per[name].append(block(engine, args.block))
        for engine in engines.values():
            engine.dispose()
    finally:
        postgres.stop()
    ms = {name: round(1000 * statistics.median(values), 3) for name, values in per.items()}
    return {"benchmark": "pool-ping", "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": environment(), "transactions_each": args.transactions, "block": args.block,
            "median_ms_per_transaction": ms,
            "saved_ms_per_transaction": round(ms["ping_every_checkout"] - ms["ping_after_1s_idle"], 3),
            "blocks_ms": {name: [round(1000 * v, 3) for v in values] for name, values in per.items()},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=4000)
    parser.add_argument("--block", type=int, default=200)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    bounded(300)
    report(run(args), args.output, ("machine", "command", "blocks_ms"))


if __name__ == "__main__":
    main()
