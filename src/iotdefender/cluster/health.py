"""A cluster node's readiness (``/healthz``) and its gauges (``/metrics``).

Ready means: connected to NATS (a broker node without it cannot store a report; a detect node
cannot renew its leases), and, for a detect node, holding exactly the partitions the live member
list assigns it (``Ownership.kept()`` against ``Ownership.share()``) — not while it is still taking its
share over after a start or a rebalance, nor while it holds partitions it should have handed over.
Once it has held its share, a difference counts only after it has lasted two lease TTLs: a
hand-over (a node joining or leaving) takes a second or two on both sides, and counting it made
every node of a rolling restart answer 503 at once (an operator's trial, in two of three restarts).
A lease *in doubt* (its bucket electing a leader after a NATS server died) is still held: the
partition has not moved, and counting it missing made every node of a default ``--roles`` (all
three) answer 503 at once during the election, so a load balancer in front of them dropped the API
and the MQTT port of the whole cluster for seconds. ``iotdefender_cluster_leases_in_doubt`` shows it.

The gauges of the detect role are not exported by a node without it (``role_metrics.py``): they
said 0 partitions and 0 members there, which read as an outage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client
from prometheus_client import Gauge

from iotdefender.cluster.node import DetectConsumer
from iotdefender.cluster.ownership import PARTITION_CHANGES
from iotdefender.cluster.topology import Topology

log = structlog.get_logger("iotdefender.cluster")

OWNED = Gauge("iotdefender_cluster_owned_partitions", "Partitions this detect node holds a valid lease on")
ASSIGNED = Gauge("iotdefender_cluster_assigned_partitions", "Partitions the live members assign this detect node")
MEMBERS = Gauge("iotdefender_cluster_members", "Live detect nodes this node sees")
CONNECTED = Gauge("iotdefender_cluster_nats_connected", "1 while this node is connected to NATS")
LAG = Gauge("iotdefender_cluster_consumer_lag", "Reports not yet delivered in an owned partition (num_pending)",
            ["partition"])
IN_DOUBT = Gauge("iotdefender_cluster_leases_in_doubt",
                 "Leases this detect node keeps while their bucket does not answer (a NATS election)")
STANDING_ASIDE = Gauge("iotdefender_cluster_standing_aside",
                       "1 while this detect node stands aside: its database unreachable, its partitions handed over")
#: What only a detect node moves (role_metrics.py); with the counter of its partition changes.
DETECT_GAUGES = (OWNED, ASSIGNED, MEMBERS, LAG, IN_DOUBT, STANDING_ASIDE, PARTITION_CHANGES)


class ClusterHealth:
    def __init__(self, nc: Client, topology: Topology, consumer: DetectConsumer | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._nc, self._topology, self._consumer = nc, topology, consumer
        self._clock = clock
        self._lagging: set[int] = set()
        # Once the node held its share, a difference counts only when it lasts this long: a
        # hand-over (a node joining or leaving: partitions released here, taken there) takes a
        # second or two, and counting it made every node of a rolling restart 503 at once.
        self._grace_s = 2 * topology.lease_ttl_s
        self._held_share_once = False
        self._differs_since: float | None = None

    def _shares(self) -> tuple[set[int], set[int]]:
        """(the partitions held, the partitions assigned) of this detect node."""
        assert self._consumer is not None
        ownership = self._consumer.ownership
        return set(ownership.kept()), ownership.share()

    def readiness(self) -> dict[str, Any] | None:
        """None when ready; else what is missing (the probe's body)."""
        missing: dict[str, Any] = {}
        if not self._nc.is_connected:
            missing["nats"] = "disconnected"
        if self._consumer is not None:
            owned, share = self._shares()
            if self._consumer.ownership.standing_aside:
                missing["partitions"] = ("standing aside: the database does not answer; its partitions went to the "
                                         "other detect nodes")
            elif not share:
                missing["partitions"] = "not yet a member of the detect nodes"
            elif owned != share and self._differs_too_long():
                missing["partitions"] = {"owned": len(owned), "assigned": len(share),
                                         "missing": len(share - owned), "extra": len(owned - share)}
            elif owned == share:
                self._held_share_once, self._differs_since = True, None
        return missing or None

    def _differs_too_long(self) -> bool:
        """Whether a difference between held and assigned partitions makes the node not ready:
        always before it first held its share, afterwards once it has lasted ``_grace_s``."""
        if not self._held_share_once:
            return True
        now = self._clock()
        if self._differs_since is None:
            self._differs_since = now
        return now - self._differs_since >= self._grace_s

    async def run(self, period_s: float = 2.0, ownership_period_s: float = 0.5) -> None:
        """Refresh the gauges: ownership's from memory every ``ownership_period_s``, the consumer
        lag (one ``consumer_info`` per owned partition) every ``period_s`` apart. Apart: during a
        NATS election those requests wait for their timeouts, and the ownership gauges refreshed
        in the same loop lagged the election they are meant to show by seconds (seen: leases in
        doubt never shown on one node, shown 3 s late on the others)."""
        await asyncio.gather(self._every(self._refresh_ownership, ownership_period_s),
                             self._every(self._refresh_lag, period_s))

    @staticmethod
    async def _every(step: Callable[[], Awaitable[None]], period_s: float) -> None:
        while True:
            try:
                await step()
            except (nats.errors.Error, asyncio.TimeoutError) as error:
                log.warning("cluster.metrics_failed", error=repr(error))
            await asyncio.sleep(period_s)

    async def _refresh(self) -> None:
        """Every gauge at once (tests)."""
        await self._refresh_ownership()
        await self._refresh_lag()

    async def _refresh_ownership(self) -> None:
        CONNECTED.set(1 if self._nc.is_connected else 0)
        if self._consumer is None:
            return
        ownership = self._consumer.ownership
        OWNED.set(len(ownership.owned()))
        ASSIGNED.set(len(ownership.share()))
        MEMBERS.set(len(ownership.members))
        IN_DOUBT.set(len(ownership.in_doubt()))
        STANDING_ASIDE.set(1 if ownership.standing_aside else 0)

    async def _refresh_lag(self) -> None:
        if self._consumer is None:
            return
        owned = set(self._consumer.ownership.owned())
        js = self._nc.jetstream()
        for partition in sorted(owned):
            info = await js.consumer_info(self._topology.stream, self._topology.consumer_of(partition), timeout=1.0)
            LAG.labels(f"{partition:04d}").set(info.num_pending)
        for partition in self._lagging - owned:
            LAG.remove(f"{partition:04d}")
        self._lagging = owned
