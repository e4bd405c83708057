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

Each entry's value says whether its node steadily reaches the database (``member_entry``), so that
a node cut off from it stands aside only for a member that can do better (ownership.py).
"""

from __future__ import annotations

import orjson

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


#: The field of a member entry that says whether its node steadily reaches the database.
REACHES_DATABASE = "reaches_database"
#: The field of a member entry that says its node splits the partitions evenly (partitions.py's
#: ``even_assignment``); a release before the even split writes no such field.
SPLITS_EVENLY = "splits_evenly"


def member_entry(reaches_database: bool | None) -> bytes:
    """The value a node puts as its member entry: whether it steadily reaches the database
    (database_reach.py), when it says (``None``: a node that says nothing of its database), and
    that it splits the partitions evenly. Every node of a release before the even split put an
    empty entry or only the database field."""
    said: dict[str, bool] = {SPLITS_EVENLY: True}
    if reaches_database is not None:
        said[REACHES_DATABASE] = reaches_database
    return orjson.dumps(said)


def _said(entry: bytes) -> dict[str, object]:
    """A member entry's fields; none for an empty entry or one this release cannot read."""
    try:
        said = orjson.loads(entry) if entry else None
    except orjson.JSONDecodeError:
        return {}
    return said if isinstance(said, dict) else {}


def reaches_database(entry: bytes) -> bool | None:
    """What a member entry says of its node's database: True, False, or None if it says nothing
    (an empty entry, a release before the field, or one this release cannot read)."""
    value = _said(entry).get(REACHES_DATABASE)
    return value if isinstance(value, bool) else None


def splits_evenly(entry: bytes) -> bool:
    """Whether a member entry's node splits the partitions evenly (False for a release before it)."""
    return _said(entry).get(SPLITS_EVENLY) is True
