"""SQL for the devices disconnected at the end of the last window closed (``cloud_disconnected``):
when each went away, so ``aws:disconnect-duration`` carries on across a restart or a takeover."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.rows import name_among, names_in_chunks, upsert_many
from iotdefender.store.schema import cloud_disconnected


def apply(conn: Connection, changes: Mapping[str, float | None], partition_of: Callable[[str], int]) -> None:
    """Record connection changes ({thing: disconnected since, or None: connected again})."""
    upsert_many(conn, cloud_disconnected, "thing", ("thing", "partition", "since"),
                [(thing, partition_of(thing), since) for thing, since in sorted(changes.items()) if since is not None])
    for chunk in names_in_chunks(sorted(thing for thing, since in changes.items() if since is None)):
        conn.execute(cloud_disconnected.delete().where(name_among(conn, cloud_disconnected.c.thing, chunk)))


def forget(conn: Connection, partitions: Sequence[int]) -> None:
    """Delete what is recorded of some partitions' devices (it can no longer be trusted)."""
    if partitions:
        conn.execute(cloud_disconnected.delete().where(cloud_disconnected.c.partition.in_(list(partitions))))


def load(conn: Connection, partition: int | None = None) -> dict[str, float]:
    """The devices disconnected and since when: every one, or those of one partition."""
    query = sa.select(cloud_disconnected.c.thing, cloud_disconnected.c.since)
    if partition is not None:
        query = query.where(cloud_disconnected.c.partition == partition)
    return {thing: float(since) for thing, since in conn.execute(query)}
