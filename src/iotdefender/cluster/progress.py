"""How far each partition's stream is committed: the highest stream sequence of a committed batch.

JetStream delivers at least once: a node that dies between its commit and its ack leaves the batch
unacked, and the next owner reads it again (report_stream.py). The batch transaction records the
highest sequence it covered here, in the same transaction as the reports, so a redelivered report
(same stream sequence, a partition's deliveries come in stream order) is recognised and not stored
a second time. One row per partition, written by its owner only (the fence serialises owners).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.rows import upsert
from iotdefender.store.schema import cluster_partition_progress as progress


def last_sequence(conn: Connection, partition: int) -> int:
    """The highest stream sequence committed for ``partition`` (0: none yet; JetStream counts from 1)."""
    found = conn.execute(sa.select(progress.c.last_sequence).where(progress.c.partition == partition)).scalar()
    return int(found) if found is not None else 0


def advance(conn: Connection, partition: int, sequence: int) -> None:
    """Record ``sequence`` as committed with this transaction (never moves the mark back)."""
    stmt = upsert(conn, progress).values(partition=partition, last_sequence=sequence)
    conn.execute(stmt.on_conflict_do_update(index_elements=[progress.c.partition],
                                            set_={"last_sequence": stmt.excluded.last_sequence},
                                            where=progress.c.last_sequence < stmt.excluded.last_sequence))


def last_sequences(conn: Connection, partitions: Iterable[int]) -> dict[int, int]:
    """``last_sequence`` of several partitions in one statement."""
    wanted = sorted(set(partitions))
    found = dict(conn.execute(sa.select(progress.c.partition, progress.c.last_sequence)
                              .where(progress.c.partition.in_(wanted))).all())
    return {partition: int(found.get(partition, 0)) for partition in wanted}


def advance_all(conn: Connection, marks: Mapping[int, int]) -> None:
    """``advance`` of several partitions ({partition: sequence}) in one statement."""
    if not marks:
        return
    stmt = upsert(conn, progress)
    conn.execute(stmt.on_conflict_do_update(index_elements=[progress.c.partition],
                                            set_={"last_sequence": stmt.excluded.last_sequence},
                                            where=progress.c.last_sequence < stmt.excluded.last_sequence),
                 [{"partition": partition, "last_sequence": sequence} for partition, sequence in sorted(marks.items())])
