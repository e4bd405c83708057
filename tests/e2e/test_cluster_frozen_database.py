"""Cluster mode with PostgreSQL frozen under load (its processes stopped with SIGSTOP: connections
stay open and the kernel acknowledges every packet, as with a hung disk), end to end: one
nats-server, two ``serve`` nodes with every role and ``--database-timeout 2``, a fleet of real MQTT
devices on each node reporting continuously (tests/support/fleet.py).

While it is frozen both nodes say 503 on ``/healthz`` (the reachability probe opens a connection
whose startup the frozen server never answers) and devices are answered ``ServiceUnavailable`` by
the detect nodes, whose batches fail within the bound (pipeline/partition_store.py): before, a
detect node retried its batch and told nobody, and each device waited for its broker node's 10 s
outcome wait to run out; once it runs again every device is accepted again, and the books hold: no
report answered ``accepted`` is missing from storage or stored twice, the violation events are
exactly the stored reports' transitions, and every report got a final answer. A COMMIT the frozen
server had received commits when it runs again: the writer settles it once that session has ended
(pipeline/detection.py), so a resend is not judged from a state behind the stored events.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.cluster_fleets import back_after, two_nodes_under_load
from tests.support.processes import PostgresCluster, ServiceProcess, wait_for
from tests.support import plain_http

pytestmark = pytest.mark.postgres

DEVICES_PER_NODE = 5
ROUND_TRIP_BOUND_S = 2.0
FREEZE_S = 12.0


def broker_timeouts(*nodes: ServiceProcess) -> float:
    """Reports the broker nodes answered ``ServiceUnavailable`` themselves (no PubAck, or no outcome
    in time: ingest/cluster_commit.py), summed over the nodes."""
    name = "iotdefender_cluster_reports_unconfirmed_total"
    return sum(float(line.split()[-1]) for node in nodes
               for line in plain_http.get(node.endpoint + "/metrics", timeout=5).text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_postgresql_frozen_under_load_in_a_cluster(jetstream, tmp_path: Path):
    database = PostgresCluster()  # its own: frozen, it must not stall the other tests' databases
    database.start()
    url = database.create_database("clfrozen")
    args = ["--cluster-url", jetstream.urls[0], "--report-min-interval", "0",
            "--database-timeout", str(ROUND_TRIP_BOUND_S)]
    try:
        with two_nodes_under_load(url, args, tmp_path, "frz", DEVICES_PER_NODE, 0.1) as (a, b, iot, fleets):
            unavailable_before = sum(f.book.outcomes()["ServiceUnavailable"] for f in fleets)
            timed_out_before = broker_timeouts(a, b)
            database.freeze()
            frozen = time.monotonic()
            try:
                wait_for(lambda: a.healthz() == 503 and b.healthz() == 503, FREEZE_S - 2,
                         "/healthz 503 on both nodes while PostgreSQL is frozen")
                told = time.monotonic() - frozen
                wait_for(lambda: sum(f.book.outcomes()["ServiceUnavailable"] for f in fleets) > unavailable_before,
                         max(0.5, FREEZE_S - (time.monotonic() - frozen)),
                         "a ServiceUnavailable answer while PostgreSQL is frozen")
                first_unavailable = time.monotonic() - frozen
                time.sleep(max(0.0, FREEZE_S - (time.monotonic() - frozen)))
                unavailable = sum(f.book.outcomes()["ServiceUnavailable"] for f in fleets) - unavailable_before
                timed_out = broker_timeouts(a, b) - timed_out_before
            finally:
                database.thaw()
            # Told by the detect nodes: more ServiceUnavailable answers than broker nodes' waits that ran
            # out (each of those is one such answer; before, they were all of them).
            assert unavailable > timed_out, (unavailable, timed_out)
            accepted_again, figures = back_after(iot, a, b, fleets, time.monotonic(), "after the thaw", 40)
            print(f"cluster frozen: /healthz 503 on both {told:.1f}s after the freeze, first ServiceUnavailable "
                  f"{first_unavailable:.1f}s, {unavailable} while frozen of which {timed_out} the brokers' waits; every device accepted 3 more {accepted_again:.1f}s after the thaw; "
                  f"books {figures}")
    finally:
        database.stop()
