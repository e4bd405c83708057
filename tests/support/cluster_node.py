"""A detect node's consuming side as its own process, so tests can kill it with -9.

``python -m tests.support.cluster_node NATS_URLS NODE_ID DATABASE_URL [--ttl S] [--hold S]``: owns
its share of the partitions; on acquiring one it claims the partition's fence; each batch is one
PostgreSQL transaction that checks the fence, stores every report once (``handled``, keyed on the
stream sequence) and logs each handling (``handlings``, append-only, to count redeliveries). After
the commit it sleeps ``--hold`` seconds before returning (and so before the ack): the window a crash
between commit and ack falls into.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import nats
import sqlalchemy as sa

from iotdefender.cluster import fencing
from iotdefender.cluster.node import DetectConsumer
from iotdefender.cluster.report_stream import Delivery, More
from iotdefender.cluster.topology import Topology, count_servers, ensure, replicas_for
from iotdefender.store.schema import cluster_partition_fences

# The fences come from the store's schema (migration 0007); the rest are this test node's own.
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS handled (stream_seq bigint PRIMARY KEY, thing text NOT NULL, "
    "report integer NOT NULL, node text NOT NULL, stored bigserial)",
    "CREATE TABLE IF NOT EXISTS handlings (node text NOT NULL, stream_seq bigint NOT NULL)",
]


def create_schema(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(14)"))  # two nodes starting together
        cluster_partition_fences.create(conn, checkfirst=True)
        for statement in SCHEMA:
            conn.execute(sa.text(statement))


async def main(urls: list[str], node_id: str, database_url: str, ttl: float, hold: float, batch: int) -> None:
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    create_schema(engine)
    nc = await nats.connect(servers=urls, max_reconnect_attempts=-1)
    js = nc.jetstream()
    topology = Topology(replicas=replicas_for(count_servers(nc)), lease_ttl_s=ttl)
    await ensure(js, topology)

    def claim(partition: int, token: int) -> None:
        with engine.begin() as conn:
            if not fencing.claim(conn, partition, token):
                raise fencing.Fenced(f"partition {partition} already claimed past {token}")

    def commit(partition: int, token: int, deliveries: Sequence[Delivery]) -> None:
        with engine.begin() as conn:
            fencing.check(conn, partition, token)
            rows = [{"s": d.stream_sequence, "t": d.thing_name, "r": int(d.payload), "n": node_id}
                    for d in deliveries]
            conn.execute(sa.text("INSERT INTO handled (stream_seq, thing, report, node) VALUES (:s, :t, :r, :n) "
                                 "ON CONFLICT (stream_seq) DO NOTHING"), rows)
            conn.execute(sa.text("INSERT INTO handlings (node, stream_seq) VALUES (:n, :s)"), rows)

    async def on_acquired(partition: int, token: int) -> None:
        await asyncio.to_thread(claim, partition, token)

    async def handle(partition: int, token: int, deliveries: Sequence[Delivery], more: More) -> None:
        await asyncio.to_thread(commit, partition, token, deliveries)
        await asyncio.sleep(hold)

    node = DetectConsumer(js, topology, node_id, handle, on_acquired=on_acquired, batch=batch)
    await node.start()
    print(f"started {node_id}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await node.stop()
    await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("urls")
    parser.add_argument("node_id")
    parser.add_argument("database_url")
    parser.add_argument("--ttl", type=float, default=5.0)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    asyncio.run(main(args.urls.split(","), args.node_id, args.database_url, args.ttl, args.hold, args.batch))
