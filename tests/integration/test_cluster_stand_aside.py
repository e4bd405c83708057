"""A detect node that stands aside (its database unreachable: cluster/database_reach.py) hands every
partition to the other detect nodes and takes its share again when it comes back; a node alone
keeps its partitions (there is nobody to hand them to). Real nats-server, two ``DetectConsumer``s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence


from iotdefender.cluster.health import ClusterHealth
from iotdefender.cluster.node import DetectConsumer
from iotdefender.cluster.partitions import PARTITION_COUNT, assignment
from iotdefender.cluster.report_stream import Delivery, More
from iotdefender.cluster.topology import Topology
from tests.support.waiting import eventually
from tests.support.jetstream import connected


async def _nothing(partition: int, token: int, batch: Sequence[Delivery], more: More) -> None:
    return None


def test_a_node_cut_off_from_its_database_hands_its_partitions_over_and_takes_them_back(jetstream):
    async def go() -> None:
        topology = Topology(replicas=1, lease_ttl_s=2.0)
        nc, _ = await connected(jetstream.urls, topology)
        cut_off = {"a": False, "b": False}
        releases = asyncio.Event()  # b's releases wait for it: b stands aside while it holds leases
        releases.set()

        async def released(partition: int) -> None:
            await releases.wait()

        nodes = {name: DetectConsumer(nc.jetstream(), topology, name, _nothing,
                                      on_released=released,
                                      stand_aside=lambda name=name: cut_off[name]) for name in "ab"}
        a, b = nodes["a"], nodes["b"]

        # Alone, a node keeps everything even without its database: nobody could take over.
        cut_off["a"] = True
        await a.start()
        await eventually(lambda: len(a.ownership.owned()) == PARTITION_COUNT, 15, "a owns all")
        await asyncio.sleep(3 * topology.lease_ttl_s / 5)  # a few rounds
        assert not a.ownership.standing_aside and len(a.ownership.owned()) == PARTITION_COUNT
        cut_off["a"] = False

        await b.start()
        share = assignment(["a", "b"])
        await eventually(lambda: set(b.ownership.owned()) == share["b"] and set(a.ownership.owned()) == share["a"],
                    15, "a and b share the partitions")

        releases.clear()
        cut_off["b"] = True
        cut = time.monotonic()
        held = dict(b.ownership.owned())
        await eventually(lambda: b.ownership.standing_aside, 5, "b stands aside")
        # From then on its readers hand nothing to the writer (the database does not answer),
        # while its leases are still being released.
        assert set(held) <= set(b.ownership.kept())
        assert not any(b.ownership.holds(p, token) for p, token in held.items())
        releases.set()
        await eventually(lambda: len(a.ownership.owned()) == PARTITION_COUNT, 10, "a takes b's partitions")
        took = time.monotonic() - cut
        assert b.ownership.standing_aside and b.ownership.kept() == {} and b.readers == {}
        assert "b" not in a.ownership.members
        readiness = ClusterHealth(nc, topology, b).readiness()  # /healthz says why
        assert readiness is not None and "standing aside" in readiness["partitions"]

        cut_off["b"] = False
        back = time.monotonic()
        await eventually(lambda: set(b.ownership.owned()) == share["b"] and set(a.ownership.owned()) == share["a"],
                    15, "b takes its share again")
        print(f"standing aside: b's {len(share['b'])} partitions held by a {took:.2f}s after it stood aside, "
              f"back with b {time.monotonic() - back:.2f}s after it could reach its database again")
        assert not b.ownership.standing_aside
        assert took < topology.lease_ttl_s  # handed over, not left to expire
        await b.stop()
        await a.stop()
        await nc.close()
    asyncio.run(asyncio.wait_for(go(), 90))
