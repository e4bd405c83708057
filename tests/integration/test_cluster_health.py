"""A cluster node's readiness against a real nats-server: ready only while connected and, for a
detect node, holding exactly its share of the partitions; the gauges /metrics shows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import nats
from prometheus_client import REGISTRY

from iotdefender.cluster.health import ClusterHealth
from iotdefender.cluster.node import DetectConsumer
from iotdefender.cluster.partitions import assignment
from iotdefender.cluster.report_stream import Delivery, More
from iotdefender.cluster.topology import Topology, ensure

PARTITIONS = 8


async def nothing(partition: int, token: int, batch: Sequence[Delivery], more: More) -> None:
    return None


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def test_ready_only_when_connected_and_holding_exactly_the_assigned_share(jetstream):
    async def go() -> None:
        topology = Topology(replicas=1, partitions=PARTITIONS, lease_ttl_s=2.0)
        nc1, nc2 = await nats.connect(servers=jetstream.urls), await nats.connect(servers=jetstream.urls)
        await ensure(nc1.jetstream(), topology)
        one = DetectConsumer(nc1.jetstream(), topology, "n1", nothing)
        two = DetectConsumer(nc2.jetstream(), topology, "n2", nothing)
        health1, health2 = ClusterHealth(nc1, topology, one), ClusterHealth(nc2, topology, two)

        assert health1.readiness() == {"partitions": "not yet a member of the detect nodes"}
        await one.start()
        assert health1.readiness() is None  # alone: all 8, as assigned
        await health1._refresh()
        assert REGISTRY.get_sample_value("iotdefender_cluster_owned_partitions") == PARTITIONS

        await two.start()  # n2 joins: n1 hands n2 its share over
        share = assignment(["n1", "n2"], PARTITIONS)
        await until(lambda: health1.readiness() is None and health2.readiness() is None, 10, "both ready")
        assert set(one.ownership.owned()) == share["n1"] and set(two.ownership.owned()) == share["n2"]
        await health2._refresh()
        assert REGISTRY.get_sample_value("iotdefender_cluster_owned_partitions") == len(share["n2"])
        assert REGISTRY.get_sample_value("iotdefender_cluster_consumer_lag", {"partition": f"{min(share['n2']):04d}"}) == 0

        # n3 joins: n1 and n2 hand it partitions over. They stay ready meanwhile (a hand-over is
        # not a fault; every node answering 503 at once dropped a cluster from its load balancer).
        nc3 = await nats.connect(servers=jetstream.urls)
        three = DetectConsumer(nc3.jetstream(), topology, "n3", nothing)
        health3 = ClusterHealth(nc3, topology, three)
        await three.start()
        unready: list[object] = []
        deadline = time.monotonic() + 15
        while health3.readiness() is not None:
            assert time.monotonic() < deadline, "n3 ready"
            unready.extend(answer for answer in (health1.readiness(), health2.readiness()) if answer is not None)
            await asyncio.sleep(0.02)
        await until(lambda: set(one.ownership.owned()) == assignment(["n1", "n2", "n3"], PARTITIONS)["n1"],
                    10, "n1 handed over")
        assert unready == [], unready[:3]
        await three.stop()
        await nc3.close()

        await nc2.close()  # n2 cut off from NATS: not ready, whatever it still believes it holds
        assert health2.readiness() is not None and health2.readiness()["nats"] == "disconnected"
        broker_only = ClusterHealth(nc1, topology, None)
        assert broker_only.readiness() is None
        await one.stop()
        await nc1.close()
        assert broker_only.readiness() == {"nats": "disconnected"}

    asyncio.run(asyncio.wait_for(go(), 60))
