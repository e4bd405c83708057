"""SQL for the devices disconnected at the end of the last window closed (``cloud_disconnected``):
when each went away, so ``aws:disconnect-duration`` carries on across a restart or a takeover."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.rows import upsert
from iotdefender.store.schema import cloud_disconnected


def apply(conn: Connection, changes: Mapping[str, float | None], partition_of: Callable[[str], int]) -> None:
    """Record connection changes ({thing: disconnected since, or None: connected again})."""
    away = [{"thing": thing, "partition": partition_of(thing), "since": since}
            for thing, since in sorted(changes.items()) if since is not None]
    back = sorted(thing for thing, since in changes.items() if since is None)
    if away:
        stmt = upsert(conn, cloud_disconnected)
        conn.execute(stmt.on_conflict_do_update(index_elements=[cloud_disconnected.c.thing],
                                                set_={"partition": stmt.excluded.partition,
                                                      "since": stmt.excluded.since}), away)
    for start in range(0, len(back), 1000):  # bound the statement's parameters (SQLite: 32,766)
        conn.execute(cloud_disconnected.delete().where(cloud_disconnected.c.thing.in_(back[start:start + 1000])))


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
