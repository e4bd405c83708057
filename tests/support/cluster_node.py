"""A detect node's consuming side as its own process, so tests can kill it with -9.

``python -m tests.support.cluster_node NATS_URLS NODE_ID OUT_FILE [--ttl S] [--hold S]``: owns its
share of the partitions and appends one line per handled report to OUT_FILE (``node seq delivered
thing``), flushed and fsynced before the handler returns (standing in for the commit), then sleeps
``--hold`` seconds before the ack (the window a crash between commit and ack falls into).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Sequence

import nats

from iotdefender.cluster.node import DetectConsumer
from iotdefender.cluster.report_stream import Delivery
from iotdefender.cluster.topology import Topology, count_servers, ensure, replicas_for


async def main(urls: list[str], node_id: str, out: str, ttl: float, hold: float, batch: int) -> None:
    nc = await nats.connect(servers=urls, max_reconnect_attempts=-1)
    js = nc.jetstream()
    topology = Topology(replicas=replicas_for(count_servers(nc)), lease_ttl_s=ttl)
    await ensure(js, topology)
    log = open(out, "a", buffering=1)

    async def handle(partition: int, token: int, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            log.write(f"{node_id} {d.stream_sequence} {d.delivered} {d.thing_name}\n")
        log.flush()
        os.fsync(log.fileno())
        await asyncio.sleep(hold)

    node = DetectConsumer(js, topology, node_id, handle, batch=batch)
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
    parser.add_argument("out")
    parser.add_argument("--ttl", type=float, default=5.0)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    asyncio.run(main(args.urls.split(","), args.node_id, args.out, args.ttl, args.hold, args.batch))
