"""Thing name -> partition, and which live node should own each partition.

The partition of a thing must be the same in every process, on every machine and in every release,
or two nodes would evaluate the same thing at once after an upgrade. Python's ``hash`` is salted per
process (PYTHONHASHSEED), so the hash here is BLAKE2b over the UTF-8 name: specified, in the
standard library, and stable. Changing the count or the hash moves things between partitions and is
refused at start-up by ``topology.ensure`` (the count is recorded in the stream's metadata).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

#: The fixed number of partitions (docs/cluster.md). 64 lets up to 64 detect nodes share the work
#: with whole partitions each, while keeping one JetStream consumer per partition cheap.
PARTITION_COUNT = 64

#: Reports of partition ``p`` are published on ``<prefix>.<p>`` (zero-padded so subjects sort).
SUBJECT_PREFIX = "iotdefender.reports"


def _stable_hash(text: str) -> int:
    """An unsigned 64-bit hash that is the same in every process and version (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def partition_of(thing_name: str, partitions: int = PARTITION_COUNT) -> int:
    """The partition that carries every report of ``thing_name`` (so its reports stay in order)."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return _stable_hash(thing_name) % partitions


def subject_of(partition: int, prefix: str = SUBJECT_PREFIX) -> str:
    """The JetStream subject of one partition."""
    return f"{prefix}.{partition:04d}"


def rendezvous_owner(partition: int, members: Iterable[str]) -> str | None:
    """The member that should own ``partition``: highest-random-weight (rendezvous) hashing.

    Every node computes the same answer from the same member list, with no coordination, and a
    join or a departure moves only the partitions that the joining or departing node wins or held
    (about 1/N of them), not a reshuffle of everything.
    """
    best: tuple[int, str] | None = None
    for member in members:
        weight = _stable_hash(f"{partition}/{member}")
        if best is None or (weight, member) > best:
            best = (weight, member)
    return None if best is None else best[1]


def rendezvous_assignment(members: Iterable[str], partitions: int = PARTITION_COUNT) -> dict[str, set[int]]:
    """Every member's share by plain rendezvous hashing (``rendezvous_owner`` per partition).

    What releases before the even split computed, kept for a cluster that still has such a member
    (``assignment``). Its shares are uneven: each partition goes to a member independently, so with
    64 partitions four members got 21/20/15/8 in a benchmark, and eight members 4 to 13 in a
    simulation; the busiest node sets the cluster's capacity."""
    names = sorted(set(members))
    share: dict[str, set[int]] = {name: set() for name in names}
    for partition in range(partitions):
        owner = rendezvous_owner(partition, names)
        if owner is not None:
            share[owner].add(partition)
    return share


def even_assignment(members: Iterable[str], partitions: int = PARTITION_COUNT) -> dict[str, set[int]]:
    """Every member's share, as even as whole partitions allow: ``partitions // n`` each, and one
    more for ``partitions % n`` of them (64 over 3: 22/21/21; over 7: 10 and six of 9).

    Rendezvous hashing with bounded loads, greedily over every (partition, member) pair, highest
    weight first: a pair is taken when the partition is still free and the member has room. Still
    computed by every node alike from the member list alone, with no messages; each partition
    goes to the member that wants it most among those with room, so a join or a departure moves
    a little more than the minimum (about 1.2x the newcomer's share on a join, and about two
    partitions between the survivors on a departure, in a simulation of 1 to 9 members), in
    exchange for shares that differ by one at most. Complete: the rooms add up to ``partitions``
    and every free partition meets every member, so none is left out."""
    names = sorted(set(members))
    share: dict[str, set[int]] = {name: set() for name in names}
    if not names:
        return share
    base, larger = divmod(partitions, len(names))
    pairs = sorted(((_stable_hash(f"{partition}/{member}"), member, partition)
                    for partition in range(partitions) for member in names), reverse=True)
    taken: set[int] = set()
    for _, member, partition in pairs:
        held = len(share[member])
        if partition in taken or held > base or (held == base and larger == 0):
            continue
        if held == base:
            larger -= 1
        share[member].add(partition)
        taken.add(partition)
    return share


def assignment(members: Iterable[str], partitions: int = PARTITION_COUNT, even: bool = True) -> dict[str, set[int]]:
    """Every member's share: ``{member: {partition, ...}}`` (members with no partition included).

    ``even`` (the default) splits the partitions evenly (``even_assignment``); ``even=False`` is plain
    rendezvous hashing (``rendezvous_assignment``), what every node must compute while a member of a
    release before the even split is alive, or the two kinds of node would each leave partitions to
    the other (ownership.py decides from the member entries)."""
    return even_assignment(members, partitions) if even else rendezvous_assignment(members, partitions)
