"""Some partitions' things, as the rows that carry a partition column are read by them.

A cluster's detect node taking partitions over reads the alarm states and the trailing history of
those partitions' things only: the rows keep their thing's partition (``alarm_states.partition``,
``metric_segments.partition``), so the read is bounded by the partitions taken instead of growing
with the fleet. Rows written before the column existed, or by a node of that release during a
rolling upgrade, have NULL there: they are read too and their things picked one by one, so nothing
is missed while both releases run.

The partition function is passed in (the cluster's ``partitions.partition_of`` at its fixed count):
the store keeps the number, the cluster layer decides it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa

T = TypeVar("T")


@dataclass(frozen=True)
class PartitionSelection:
    """The things of ``partitions``, under ``partition_of``."""

    partitions: frozenset[int]
    partition_of: Callable[[str], int]

    def __call__(self, thing: str) -> bool:
        return self.partition_of(thing) in self.partitions

    def where(self, column: sa.ColumnElement[int | None]) -> sa.ColumnElement[bool]:
        """Rows of the selected partitions, and rows of no recorded partition (picked by thing after)."""
        return sa.or_(column.in_(sorted(self.partitions)), column.is_(None))


def once_per_thing(of_thing: Callable[[str], T]) -> Callable[[str], T]:
    """``of_thing`` remembered per thing, for one batch of rows (make one per batch: it keeps every
    thing it was asked about). A thing has many rows (its alarm states, its reports), and hashing
    its name for each one cost a single box ~40 % of its ingest capacity (bench/README.md, "A
    regression found and fixed")."""
    known: dict[str, T] = {}

    def remembered(thing: str) -> T:
        if thing in known:
            return known[thing]
        found = known[thing] = of_thing(thing)
        return found

    return remembered
