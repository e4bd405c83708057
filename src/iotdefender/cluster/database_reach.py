"""Whether a detect node has been cut off from PostgreSQL long enough to stand aside.

A detect node renews its leases over NATS, not PostgreSQL, so a node that loses only its database
(a firewall rule, its connection pool refused, its network path to the primary down) kept every
partition it owned: their batches failed and were handed over again every 0.2 s, their devices were
answered ``ServiceUnavailable`` for as long as it lasted, while the other detect nodes reached the
database and could have taken them (measured: 5 of 12 devices answered nothing but
``ServiceUnavailable`` for the whole of a 30 s cut). Such a node now stands aside
(ownership.py): it leaves the membership and hands its partitions over; it comes back when the
database answers again.

The grace keeps a short outage (a restart, a failover) from moving anything. Past it, a node stands
aside only if another member says it *steadily* reaches the database (``steady``, published in its
member entry): when the database is away for everyone, nobody could claim a fence anyway, and the
nodes' batches go through as soon as it is back (0.4 s after a 6 s crash in test_cluster_nats3).
Before, the nodes stood aside in turn past the grace and handed their partitions to nodes that
could not reach it either, which took them, failed to claim their fences and gave them back every
round (2,396 acquisitions and releases in a 60 s outage: bench/database_away.py).

Three answers, each for one decision (ownership.py):

- ``cut_off``: no answer for the whole grace: this node stands aside (if someone is ``steady``);
- ``answers``: the latest probe was answered: this node may take partitions (taking one claims its
  fence in the database first; one that cannot fails, gives it back and takes it again next round);
- ``steady``: answered for ``STEADY_S`` in a row: what this node tells the others. Not ``answers``:
  when the database comes back for everyone, the first node to see it would otherwise make a node
  whose probe has not answered yet, still past its grace, stand aside a second before it rejoins
  (every partition moved twice).
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

#: Seconds of answered probes in a row before this node tells the others it reaches the database.
#: Longer than any node takes to see it back: a probe every second, which gives up after 2 s
#: (store/database.probe_engine), and a tick to publish it; shorter than the default grace (15 s),
#: so a node cut off alone still stands aside at the end of its grace.
STEADY_S = 5.0


class DatabaseReach:
    """Probes the database every ``interval_s`` (``probe`` blocks: it runs in a worker thread)."""

    def __init__(self, probe: Callable[[], bool], grace_s: float, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, steady_s: float = STEADY_S) -> None:
        self._probe, self._grace_s, self._interval_s, self._clock = probe, grace_s, interval_s, clock
        self._steady_s = steady_s
        self._down_since: float | None = None
        self._up_since: float | None = None  # None until a probe answered (not steady at start)

    def observe(self, reachable: bool) -> None:
        """One probe's result, at the clock's now."""
        if reachable:
            self._down_since = None
            if self._up_since is None:
                self._up_since = self._clock()
        else:
            self._up_since = None
            if self._down_since is None:
                self._down_since = self._clock()

    def cut_off(self) -> bool:
        """Whether the database has not answered for the whole grace."""
        return self._down_since is not None and self._clock() - self._down_since >= self._grace_s

    def answers(self) -> bool:
        """Whether the latest probe was answered (True before the first one: the node started on it)."""
        return self._down_since is None

    def steady(self) -> bool:
        """Whether the probes have been answered for ``steady_s`` in a row."""
        return self._up_since is not None and self._clock() - self._up_since >= self._steady_s

    async def run(self) -> None:
        while True:
            try:
                reachable = await asyncio.to_thread(self._probe)
            except Exception:  # not an outage the probe knows; log it, and count it as one
                log.exception("cluster.database_probe_failed")
                reachable = False
            self.observe(reachable)
            await asyncio.sleep(self._interval_s)
