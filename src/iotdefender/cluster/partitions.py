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


def assignment(members: Iterable[str], partitions: int = PARTITION_COUNT) -> dict[str, set[int]]:
    """Every member's share: ``{member: {partition, ...}}`` (members with no partition included)."""
    names = sorted(set(members))
    share: dict[str, set[int]] = {name: set() for name in names}
    for partition in range(partitions):
        owner = rendezvous_owner(partition, names)
        if owner is not None:
            share[owner].add(partition)
    return share
