"""Partition churn while PostgreSQL is down for every detect node (issue #14).

Starts PostgreSQL, one nats-server and two ``iotdefender serve`` nodes with every role, runs a
small fleet of MQTT devices on each node (tests/support/fleet.py), stops PostgreSQL
(``pg_ctl -m immediate``) for ``--outage`` seconds — longer than the stand-aside grace (3 lease
TTLs) — and counts, from the nodes' logs, what happened to the partitions meanwhile: acquisitions,
releases, expiries, starts that failed (a claim refused: no database), stand-asides and deferred
acquisitions. Then it starts PostgreSQL again and records how long until every device had 3 more
reports accepted, and the exact books (nothing accepted lost or stored twice).

    PYTHONPATH=src .venv/bin/python bench/database_away.py --outage 60 --out bench/results/x.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import bounded, environment, report  # noqa: E402
from tests.support.cluster_fleets import two_nodes_under_load  # noqa: E402
from tests.support.fleet import exact_books, per_device  # noqa: E402
from tests.support.jetstream import SingleJetStream  # noqa: E402
from tests.support.processes import PostgresCluster, ServiceProcess, wait_for  # noqa: E402

EVENTS = ("cluster.partition_acquired", "cluster.partition_released", "cluster.partition_expired",
          "cluster.partition_start_failed", "cluster.standing_aside", "cluster.rejoining",
          "cluster.acquisitions_deferred")


def counts(node: ServiceProcess) -> dict[str, int]:
    assert node.log_path is not None
    text = node.log_path.read_text(errors="replace")
    return {event: text.count(f'"{event}"') for event in EVENTS}


def run(outage_s: float, lease_ttl_s: float, devices: int) -> dict[str, Any]:
    nats, database = SingleJetStream(), PostgresCluster()
    nats.start()
    database.start()
    root = Path(tempfile.mkdtemp(prefix="iotdefender-away-"))
    try:
        url = database.create_database("away")
        args = ["--cluster-url", nats.urls[0], "--report-min-interval", "0", "--database-timeout", "2",
                "--cluster-lease-ttl", str(lease_ttl_s)]
        with two_nodes_under_load(url, args, root, "away", devices, 0.2, accepted=3) as (a, b, iot, fleets):
            wait_for(lambda: all(counts(n)["cluster.partition_acquired"] > 0 for n in (a, b)), 30, "both hold")
            time.sleep(2 * lease_ttl_s)  # settled
            before = {name: counts(n) for name, n in (("a", a), ("b", b))}
            database.halt()
            try:
                time.sleep(outage_s)
                during = {name: {event: counts(n)[event] - before[name][event] for event in EVENTS}
                          for name, n in (("a", a), ("b", b))}
            finally:
                database.resume()
            back = time.monotonic()
            accepted = per_device(fleets)
            wait_for(lambda: all(per_device(fleets)[t] >= accepted[t] + 3 for t in accepted), 60,
                     "every device accepted again")
            accepted_again_s = round(time.monotonic() - back, 2)
            books = exact_books(iot, fleets)
    finally:
        database.stop()
        nats.stop()
    moves = sum(during[n][e] for n in during for e in EVENTS[:3])
    return {"outage_s": outage_s, "lease_ttl_s": lease_ttl_s, "grace_s": 3 * lease_ttl_s,
            "devices": 2 * devices, "moves_during_outage": moves, "per_node": during,
            "every_device_accepted_again_s": accepted_again_s, "books": books}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=60.0, help="seconds PostgreSQL is down")
    parser.add_argument("--lease-ttl", type=float, default=5.0, help="--cluster-lease-ttl (grace: 3 of them)")
    parser.add_argument("--devices", type=int, default=3, help="devices per node")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--label", default="", help="what this run measures (e.g. the commit)")
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    bounded(int(options.runs * (options.outage + 180)))
    result = {"benchmark": "database_away", "date": datetime.now().isoformat(timespec="seconds"),
              "label": options.label, "machine": environment(), "command": " ".join(sys.argv),
              "runs": [run(options.outage, options.lease_ttl, options.devices) for _ in range(options.runs)]}
    report(result, options.out)


if __name__ == "__main__":
    main()
