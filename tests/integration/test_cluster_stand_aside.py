"""A detect node that stands aside (its database unreachable: cluster/database_reach.py) hands every
partition to a detect node that reaches it and takes its share again when it comes back; a node
alone keeps its partitions (there is nobody to hand them to), and so do nodes none of which reaches
the database (nobody would do better). Real nats-server, ``DetectConsumer``s whose databases the
test drives (``Database``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from nats.aio.client import Client
from prometheus_client import REGISTRY

from iotdefender.cluster.database_reach import DatabaseReach
from iotdefender.cluster.health import ClusterHealth
from iotdefender.cluster.node import DetectConsumer
from iotdefender.cluster.partitions import PARTITION_COUNT, assignment
from iotdefender.cluster.report_stream import Delivery, More
from iotdefender.cluster.topology import Topology
from tests.support.jetstream import connected
from tests.support.waiting import eventually

#: Short for the test's speed, but not 2 s: a node's renewals, in the pytest process, ran late under
#: a loaded full run and every lease of the node lapsed locally (its owned() was empty for a moment).
TTL_S = 3.0
GRACE_S = 3 * TTL_S
STEADY_S = 5.0
ROUNDS_S = 5 * TTL_S / 5  # five rebalance rounds


async def _nothing(partition: int, token: int, batch: Sequence[Delivery], more: More) -> None:
    return None


class Database:
    """One node's database as its ``DatabaseReach`` sees it, on a clock of its own that the test
    moves: ``failing`` (its probes fail, within the grace), ``away`` (past the grace), ``back``
    (answering; steady ``STEADY_S`` later, or at once with ``steady``). Taking a partition claims
    its fence in it, so an acquisition fails while it does not answer, as in the service."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.answering = True
        self.reach = DatabaseReach(lambda: True, grace_s=GRACE_S, clock=lambda: self.now, steady_s=STEADY_S)
        self.back(steady=True)
        self.claims = 0  # acquisitions tried while it did not answer

    def failing(self) -> None:
        self.answering = False
        self.reach.observe(False)

    def away(self) -> None:
        self.failing()
        self.now += GRACE_S

    def back(self, steady: bool = False) -> None:
        self.answering = True
        self.reach.observe(True)
        if steady:
            self.now += STEADY_S

    async def claim(self, partition: int, token: int) -> None:
        if not self.answering:
            self.claims += 1
            raise ConnectionRefusedError("the database does not answer")


async def _sharing(jetstream, names: str = "ab"
                   ) -> tuple[Client, dict[str, DetectConsumer], dict[str, Database]]:
    """Nodes ``names``, started, once they share the partitions; each with a database of its own."""
    topology = Topology(replicas=1, lease_ttl_s=TTL_S)
    nc, _ = await connected(jetstream.urls, topology)
    databases = {name: Database() for name in names}
    nodes = {name: DetectConsumer(nc.jetstream(), topology, name, _nothing, on_acquired=databases[name].claim,
                                  database=databases[name].reach) for name in names}
    for node in nodes.values():
        await node.start()
    await _shared(nodes)
    return nc, nodes, databases


def _moves(nodes: dict[str, DetectConsumer]) -> int:
    """Acquisitions, releases and expiries so far, on every node."""
    return sum(node.ownership.rebalances for node in nodes.values())


def _counted() -> float:
    """The same as ``iotdefender_cluster_partition_changes_total`` counts them (every node of the process)."""
    return sum(REGISTRY.get_sample_value("iotdefender_cluster_partition_changes_total", {"change": change}) or 0.0
               for change in ("acquired", "released", "expired"))


async def _shared(nodes: dict[str, DetectConsumer]) -> None:
    share = assignment(sorted(nodes))
    await eventually(lambda: all(set(node.ownership.owned()) == share[name] for name, node in nodes.items()),
                     15, "the nodes share the partitions")


def test_a_node_cut_off_from_its_database_hands_its_partitions_over_and_takes_them_back(jetstream):
    async def go() -> None:
        topology = Topology(replicas=1, lease_ttl_s=TTL_S)
        nc, _ = await connected(jetstream.urls, topology)
        releases = asyncio.Event()  # b's releases wait for it: b stands aside while it holds leases
        releases.set()

        async def released(partition: int) -> None:
            await releases.wait()

        databases = {name: Database() for name in "ab"}
        nodes = {name: DetectConsumer(nc.jetstream(), topology, name, _nothing, on_released=released,
                                      database=databases[name].reach) for name in "ab"}
        a, b = nodes["a"], nodes["b"]

        # Alone, a node keeps everything even without its database: nobody could take over.
        await a.start()
        await eventually(lambda: len(a.ownership.owned()) == PARTITION_COUNT, 15, "a owns all")
        databases["a"].away()
        await asyncio.sleep(3 * TTL_S / 5)  # a few rounds
        assert not a.ownership.standing_aside and len(a.ownership.owned()) == PARTITION_COUNT
        databases["a"].back(steady=True)

        await b.start()
        share = assignment(["a", "b"])
        await _shared(nodes)

        releases.clear()
        databases["b"].away()
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

        databases["b"].back()
        back = time.monotonic()
        await _shared(nodes)
        print(f"standing aside: b's {len(share['b'])} partitions held by a {took:.2f}s after it stood aside, "
              f"back with b {time.monotonic() - back:.2f}s after it could reach its database again")
        assert not b.ownership.standing_aside
        assert took < topology.lease_ttl_s  # handed over, not left to expire
        await b.stop()
        await a.stop()
        await nc.close()
    asyncio.run(asyncio.wait_for(go(), 90))


def test_a_database_away_for_every_node_moves_no_partition(jetstream):
    """Before, past the grace the nodes stood aside in turn and handed their partitions to nodes that
    could not reach the database either, which took them, failed to claim their fences and gave
    them back every round (2,396 acquisitions and releases in a 60 s outage: bench/database_away.py)."""
    async def go() -> None:
        nc, nodes, databases = await _sharing(jetstream)
        before = _moves(nodes)

        databases["a"].failing()
        databases["b"].failing()
        await asyncio.sleep(ROUNDS_S)  # within the grace: their entries say so
        databases["a"].away()  # a's grace ends first; b's probes fail, its grace is not over
        await asyncio.sleep(ROUNDS_S)
        databases["b"].away()  # now both are past it
        await asyncio.sleep(ROUNDS_S)
        assert not any(node.ownership.standing_aside for node in nodes.values())
        databases["b"].back()  # back for b first: it answers, but not steadily yet, and a is still cut off
        await asyncio.sleep(ROUNDS_S)
        assert not nodes["a"].ownership.standing_aside
        databases["a"].back()
        await asyncio.sleep(ROUNDS_S)

        moved = _moves(nodes) - before
        claims = sum(database.claims for database in databases.values())
        print(f"database away for every node: {moved} partition moves, {claims} claims tried without it")
        assert (moved, claims) == (0, 0)
        await _shared(nodes)
        for node in nodes.values():
            await node.stop()
        await nc.close()
    asyncio.run(asyncio.wait_for(go(), 90))


def test_partitions_move_once_to_the_node_that_reaches_the_database_and_stay_when_it_loses_it_too(jetstream):
    async def go() -> None:
        nc, nodes, databases = await _sharing(jetstream)
        a, b = nodes["a"], nodes["b"]
        share = assignment(["a", "b"])
        before, counted = _moves(nodes), _counted()

        databases["a"].away()  # b steadily reaches it: a stands aside, b takes a's share once
        await eventually(lambda: len(b.ownership.owned()) == PARTITION_COUNT, 10, "b takes a's partitions")
        assert a.ownership.standing_aside
        databases["b"].away()  # now nobody reaches it: b keeps everything, a stays aside
        await asyncio.sleep(2 * ROUNDS_S)
        assert a.ownership.standing_aside and not b.ownership.standing_aside
        assert len(b.ownership.owned()) == PARTITION_COUNT
        once = _moves(nodes) - before
        assert once == 2 * len(share["a"]), once  # a's releases and b's acquisitions, nothing more

        databases["b"].back()
        databases["a"].back()  # a rejoins and takes its share back
        await _shared(nodes)
        moved = _moves(nodes) - before
        print(f"a cut off, then b too, then both back: {moved} partition moves for a's {len(share['a'])}")
        assert moved == 4 * len(share["a"]), moved
        assert _counted() - counted == moved  # what /metrics says
        assert sum(database.claims for database in databases.values()) == 0
        for node in nodes.values():
            await node.stop()
        await nc.close()
    asyncio.run(asyncio.wait_for(go(), 90))


def test_a_node_whose_database_does_not_answer_takes_nothing_until_it_does(jetstream):
    """A partition taken claims its fence in the database first: before, a node that could not reach
    it took the partitions of a node that left, failed to claim them, gave them back and took them
    again every round."""
    async def go() -> None:
        nc, nodes, databases = await _sharing(jetstream)
        a, b = nodes["a"], nodes["b"]

        databases["b"].failing()
        await a.stop()  # a leaves: its share is b's, whose database does not answer
        await asyncio.sleep(ROUNDS_S)
        assert set(b.ownership.owned()) == assignment(["a", "b"])["b"]
        assert databases["b"].claims == 0
        databases["b"].back()
        await eventually(lambda: len(b.ownership.owned()) == PARTITION_COUNT, 10, "b takes a's partitions")
        assert databases["b"].claims == 0
        await b.stop()
        await nc.close()
    asyncio.run(asyncio.wait_for(go(), 90))


def test_a_member_that_says_nothing_of_its_database_counts_as_reaching_it(jetstream):
    """Mixed versions: a node of a release before the field puts an empty member entry (here one
    without a ``database``). A node cut off from its database stands aside for it, as before."""
    async def go() -> None:
        topology = Topology(replicas=1, lease_ttl_s=TTL_S)
        nc, _ = await connected(jetstream.urls, topology)
        database = Database()
        nodes = {"new": DetectConsumer(nc.jetstream(), topology, "new", _nothing, database=database.reach),
                 "old": DetectConsumer(nc.jetstream(), topology, "old", _nothing)}
        for node in nodes.values():
            await node.start()
        await _shared(nodes)
        database.away()
        await eventually(lambda: len(nodes["old"].ownership.owned()) == PARTITION_COUNT, 10,
                         "the old node takes the new one's partitions")
        assert nodes["new"].ownership.standing_aside
        for node in nodes.values():
            await node.stop()
        await nc.close()
    asyncio.run(asyncio.wait_for(go(), 60))
