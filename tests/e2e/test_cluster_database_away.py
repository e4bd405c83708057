"""Cluster mode with PostgreSQL down for every detect node for longer than the stand-aside grace
(cluster/database_reach.py), end to end: one nats-server, two ``serve`` nodes with every role and
a 2 s lease (a 6 s grace), a fleet of real MQTT devices on each node.

No node can reach the database any better than the other, so none stands aside and no partition
moves while it is down: before, the nodes stood aside in turn and handed their partitions to a
node that could not claim them either, which took them, failed to start them and gave them back
every round (hundreds of acquisitions and releases a minute, each a rebalance in the logs and a
claim attempt). Once the database is back every device is accepted again and the books hold.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.cluster_fleets import back_after, two_nodes_under_load
from tests.support.processes import PostgresCluster, ServiceProcess, wait_for

pytestmark = pytest.mark.postgres

DEVICES_PER_NODE = 3
LEASE_TTL_S = 2.0  # the grace is 3 TTLs: 6 s (a loaded machine stalls a loop for longer than 1 s leases allow)
OUTAGE_S = 14.0  # past the grace by more than a grace
MOVES = ("cluster.partition_acquired", "cluster.partition_released", "cluster.partition_expired")


def moves(node: ServiceProcess) -> int:
    """Acquisitions, releases and expiries this node has logged so far."""
    assert node.log_path is not None
    text = node.log_path.read_text(errors="replace")
    return sum(text.count(event) for event in MOVES)


def test_postgresql_down_for_every_node_moves_no_partition(jetstream, tmp_path: Path):
    database = PostgresCluster()  # its own: it is stopped
    database.start()
    url = database.create_database("claway")
    args = ["--cluster-url", jetstream.urls[0], "--report-min-interval", "0", "--database-timeout", "2",
            "--cluster-lease-ttl", str(LEASE_TTL_S)]
    try:
        with two_nodes_under_load(url, args, tmp_path, "away", DEVICES_PER_NODE, 0.2, accepted=3) as (a, b, iot, fleets):
            wait_for(lambda: a.healthz() == 200 and b.healthz() == 200, 20, "both nodes hold their share")
            before = moves(a) + moves(b)
            database.halt()
            try:
                time.sleep(OUTAGE_S)
                during = moves(a) + moves(b) - before
            finally:
                database.resume()
            accepted_again, figures = back_after(iot, a, b, fleets, time.monotonic(), "once the database is back")
            print(f"database away for both nodes {OUTAGE_S:.0f}s (grace {3 * LEASE_TTL_S:.0f}s): {during} partition "
                  f"acquisitions/releases/expiries while it was down; every device accepted 3 more "
                  f"{accepted_again:.1f}s after it was back; books {figures}")
            assert during == 0, f"{during} partition moves while no node could reach the database"
    finally:
        database.stop()
