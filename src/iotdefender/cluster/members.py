"""The member list a detect node computes its share from, steadied across a key-value outage.

Members are entries of the ``iotdefender-members`` bucket that expire after the lease TTL unless
re-put every tick (ownership.py). When the bucket has no leader (a NATS server of three died and
its Raft group is electing, 4-9 s with nats-server's defaults) nobody can put, so every entry may
have expired by the time the bucket answers again, although every node is alive. Acting on such a
list would move partitions for nothing (a node that reads itself alone takes everything it can; a
node that does not read itself gives everything up).

So the view keeps the last list it read while the bucket is unreadable, and after an outage (two
or more requests in a row without an answer) it only *adds* members for ``settle_s``, never drops
one: the live nodes re-put within a tick once the bucket answers, and a node that really died
meanwhile is dropped ``settle_s`` later. One request without an answer (a slow moment on a loaded
machine) is not an outage, so it does not delay the takeover of a node that was killed; an
election lasts several requests (a put and a read every second or two). The node itself is
always a member while it is not leaving (it is alive: it is computing this). Outside an outage a
list is taken as read, so a killed node is still dropped one TTL after its last put.
"""

from __future__ import annotations

#: Requests in a row without an answer that make an outage (one is a slow moment).
OUTAGE_FAILURES = 2


class MemberView:
    """The member list to assign partitions over; told each answer and each failure of the bucket."""

    def __init__(self, node_id: str, settle_s: float) -> None:
        self._node_id, self._settle_s = node_id, settle_s
        self._failures = 0  # requests in a row without an answer
        self._settle_until = float("-inf")
        self.members: list[str] = []

    def failed(self) -> None:
        """A request to the members bucket (a put or a read) got no answer."""
        self._failures += 1

    def answered(self, now: float) -> None:
        """The members bucket answered (a put or a read) at ``now``: an outage, if it was one, ends."""
        if self._failures >= OUTAGE_FAILURES:
            self._settle_until = now + self._settle_s
        self._failures = 0

    def read(self, keys: list[str], now: float, leaving: bool = False) -> list[str]:
        """The list to use after reading ``keys`` from the bucket at ``now``."""
        self.answered(now)
        current = set(keys)
        if leaving:
            current.discard(self._node_id)
        else:
            current.add(self._node_id)
        if now < self._settle_until:
            kept = set(self.members) - ({self._node_id} if leaving else set())
            current |= kept  # entries that expired during the outage: their nodes re-put first
        self.members = sorted(current)
        return self.members
