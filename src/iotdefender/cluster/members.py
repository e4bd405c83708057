"""The member list a detect node computes its share from, steadied across a key-value outage.

Members are entries of the ``iotdefender-members`` bucket that expire after the lease TTL unless
re-put every tick (ownership.py). When the bucket has no leader (a NATS server of three died and
its Raft group is electing, 4-9 s with nats-server's defaults) nobody can put, so every entry may
have expired by the time the bucket answers again, although every node is alive. Acting on such a
list would move partitions for nothing (a node that reads itself alone takes everything it can; a
node that does not read itself gives everything up).

What tells an outage is this node's own heartbeat: two puts in a row without an answer (one is a
slow moment on a loaded machine, and does not delay the takeover of a node that was killed; an
election lasts several ticks). During an outage, and for ``settle_s`` after the first put that is
answered again, the view only *adds* members, never drops one: the live nodes re-put within a tick
once the bucket takes puts, and a node that really died meanwhile is dropped ``settle_s`` later.
Reads do not end an outage: a listing can be answered while puts are not (seen in
test_cluster_nats3: reads came back, without the entries that had expired, while every put still
failed, and a node that counted those answers as the end of the outage took the other's partitions).
The node itself is always a member while it is not leaving (it is alive: it is computing this).
Outside an outage a list is taken as read, so a killed node is still dropped one TTL after its last put.
"""

from __future__ import annotations

#: This node's heartbeats in a row without an answer that make an outage (one is a slow moment).
OUTAGE_FAILURES = 2


class MemberView:
    """The member list to assign partitions over; told how each of this node's heartbeats went."""

    def __init__(self, node_id: str, settle_s: float) -> None:
        self._node_id, self._settle_s = node_id, settle_s
        self._put_failures = 0  # heartbeats in a row without an answer
        self._settle_until = float("-inf")
        self.members: list[str] = []

    def put_failed(self) -> None:
        """This node's heartbeat (its put to the members bucket) got no answer."""
        self._put_failures += 1

    def put_answered(self, now: float) -> None:
        """This node's heartbeat was stored at ``now``: an outage, if it was one, settles from here."""
        if self._put_failures >= OUTAGE_FAILURES:
            self._settle_until = now + self._settle_s
        self._put_failures = 0

    def read(self, keys: list[str], now: float, leaving: bool = False) -> list[str]:
        """The list to use after reading ``keys`` from the bucket at ``now``."""
        current = set(keys)
        if leaving:
            current.discard(self._node_id)
        else:
            current.add(self._node_id)
        if self._put_failures >= OUTAGE_FAILURES or now < self._settle_until:
            kept = set(self.members) - ({self._node_id} if leaving else set())
            current |= kept  # entries that expired during the outage: their nodes re-put first
        self.members = sorted(current)
        return self.members
