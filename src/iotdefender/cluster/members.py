"""The member list a detect node computes its share from, steadied across a key-value outage.

Members are entries of the ``iotdefender-members`` bucket that expire after the lease TTL unless
re-put every tick (ownership.py). When the bucket has no leader (a NATS server of three died and
its Raft group is electing, 4-9 s with nats-server's defaults) nobody can put, so every entry may
have expired by the time the bucket answers again, although every node is alive. Acting on such a
list would move partitions for nothing (a node that reads itself alone takes everything it can; a
node that does not read itself gives everything up).

So the view keeps the last list it read while the bucket is unreadable, and after an outage long
enough for entries to expire (at least ``min_outage_s`` of failures) it only *adds* members for
``settle_s``, never drops one: the live nodes re-put within a tick once the bucket answers, and a
node that really died meanwhile is dropped ``settle_s`` later. A single slow request (a loaded
machine) is not such an outage: it does not delay the takeover of a node that was killed. The
node itself is always a member while it is not leaving (it is alive: it is computing this).
Outside an outage a list is taken as read, so a killed node is still dropped one TTL after its
last put.
"""

from __future__ import annotations


class MemberView:
    """The member list to assign partitions over; told each read and each failure of the bucket."""

    def __init__(self, node_id: str, settle_s: float, min_outage_s: float | None = None) -> None:
        self._node_id, self._settle_s = node_id, settle_s
        self._min_outage_s = min_outage_s if min_outage_s is not None else settle_s / 2
        self._failing_since: float | None = None  # the first failure of the current outage
        self._settle_until = float("-inf")
        self.members: list[str] = []

    def failed(self, sent: float) -> None:
        """The members bucket did not answer a request (a put or a read) sent at ``sent``: the send
        time, not the time the timeout fired, so an outage is measured from its start (a read
        that waits seconds before failing does not shorten it)."""
        if self._failing_since is None or sent < self._failing_since:
            self._failing_since = sent

    def answered(self, now: float) -> None:
        """The members bucket answered (a put or a read): an outage, if long enough, ends here."""
        if self._failing_since is not None and now - self._failing_since >= self._min_outage_s:
            self._settle_until = now + self._settle_s
        self._failing_since = None

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
