"""Whether a detect node has been cut off from PostgreSQL long enough to stand aside.

A detect node renews its leases over NATS, not PostgreSQL, so a node that loses only its database
(a firewall rule, its connection pool refused, its network path to the primary down) kept every
partition it owned: their batches failed and were handed over again every 0.2 s, their devices were
answered ``ServiceUnavailable`` for as long as it lasted, while the other detect nodes reached the
database and could have taken them (measured: 5 of 12 devices answered nothing but
``ServiceUnavailable`` for the whole of a 30 s cut). Such a node now stands aside
(ownership.py): it leaves the membership and hands its partitions over; it comes back when the
database answers again.

The grace keeps a database that is away for everyone (a restart, a failover) from moving every
partition: nobody could claim a fence then anyway, and the nodes' batches go through as soon as it
is back (0.4 s after a 6 s crash in test_cluster_nats3). A cut that outlasts the grace moves the
partitions even when everyone lost the database; safe (claims are fenced in PostgreSQL), only slower
to recover.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("iotdefender.cluster")

#: The grace, in lease TTLs (15 s by default): longer than a PostgreSQL restart, and than the
#: takeover of a killed node's partitions (one TTL) that this is the database's counterpart of.
GRACE_TTLS = 3.0


class DatabaseReach:
    """Probes the database every ``interval_s`` (``probe`` blocks: it runs in a worker thread)."""

    def __init__(self, probe: Callable[[], bool], grace_s: float, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._probe, self._grace_s, self._interval_s, self._clock = probe, grace_s, interval_s, clock
        self._down_since: float | None = None

    def observe(self, reachable: bool) -> None:
        """One probe's result, at the clock's now."""
        if reachable:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = self._clock()

    def cut_off(self) -> bool:
        """Whether the database has not answered for the whole grace."""
        return self._down_since is not None and self._clock() - self._down_since >= self._grace_s

    async def run(self) -> None:
        while True:
            try:
                reachable = await asyncio.to_thread(self._probe)
            except Exception:  # not an outage the probe knows; log it, and count it as one
                log.exception("cluster.database_probe_failed")
                reachable = False
            self.observe(reachable)
            await asyncio.sleep(self._interval_s)
