"""Listing the detect nodes every tick must not leave JetStream consumers behind (real nats-server)."""

from __future__ import annotations

import asyncio
import time


from iotdefender.cluster.ownership import bucket_keys
from iotdefender.cluster.topology import Topology
from tests.support.jetstream import connected


def test_listing_the_members_every_tick_leaves_no_consumer_behind(jetstream):
    """nats-py's KeyValue.keys() left each listing's consumer on the server for 5 minutes: ~300 per
    detect node, and at four nodes the server's limit of 1,000 consumers on the members' stream
    made every rebalance fail. A listing's consumer is now gone about a second after it."""
    async def go() -> None:
        topology = Topology(replicas=1, partitions=8)
        nc, js = await connected(jetstream.urls, topology)
        members = await js.key_value(topology.members_bucket)
        await members.put("node-a", b"")
        await members.put("node-b", b"")
        for _ in range(30):  # thirty ticks' worth
            assert sorted(await bucket_keys(members)) == ["node-a", "node-b"]
        await members.delete("node-b")  # a clean leave
        assert await bucket_keys(members) == ["node-a"]
        stream = f"KV_{topology.members_bucket}"
        deadline = time.monotonic() + 15
        while (count := (await js.stream_info(stream)).state.consumer_count) > 0:
            assert time.monotonic() < deadline, f"{count} listing consumers still on the server"
            await asyncio.sleep(0.25)
        await nc.close()

    asyncio.run(asyncio.wait_for(go(), 60))
