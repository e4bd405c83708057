"""Fencing tokens in PostgreSQL: a node that lost a partition cannot commit for it any more.

A lease in NATS says who *should* own a partition; it cannot stop a paused or partitioned process
that still believes it owns one (Kleppmann, "How to do distributed locking": a lock needs a fencing
token checked by the storage). The token is the KV revision at which the node acquired the lease,
above the leases bucket's creation time (``ownership.token_epoch``): revisions of a bucket only
grow, and a bucket created again (revisions from 1) has a later creation time, so a later owner
always holds a larger token.

- ``claim`` runs when a node acquires a partition, before it loads the partition's alarm states:
  it raises the partition's fence to the new token (never lowers it).
- ``move`` runs when a node had to create its own lease again (it expired while the key-value
  bucket had no leader, ownership.py): a compare-and-set from the old token to the new one. It
  succeeds only if nobody claimed the partition in between, i.e. nobody committed for it, so the
  node's reader and in-memory alarm states are still the partition's truth and are kept.
- ``check`` runs inside every batch transaction, before its commit: it locks the fence row and
  fails with ``Fenced`` unless the fence still equals the node's token. A claim by a newer owner
  either commits first (the stale commit sees the higher token and rolls back) or waits on the row
  lock until the stale transaction ends (the new owner then loads states that include it).

The fences live in ``cluster_partition_fences`` (store/schema.py, migration 0007). The row lock
is PostgreSQL's (``FOR UPDATE``); SQLite, which has one writer at a time anyway, ignores it, so the
functions run there too (cluster mode itself requires PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.rows import upsert
from iotdefender.store.schema import cluster_partition_fences as fences


class Fenced(RuntimeError):
    """This node's lease on the partition was superseded: roll back, do not ack."""


def claim(conn: Connection, partition: int, token: int) -> bool:
    """Raise the fence of ``partition`` to ``token``; False if a newer owner already claimed it."""
    stmt = upsert(conn, fences).values(partition=partition, token=token)
    stmt = stmt.on_conflict_do_update(index_elements=[fences.c.partition], set_={"token": stmt.excluded.token},
                                      where=fences.c.token <= stmt.excluded.token).returning(fences.c.token)
    return conn.execute(stmt).first() is not None


def move(conn: Connection, partition: int, old: int, new: int) -> bool:
    """Move the fence of ``partition`` from ``old`` to ``new`` (a larger token) only if it still is
    ``old``; False if another owner claimed it meanwhile (then the caller's state is stale).

    Waits on the row lock of a batch transaction in progress (which, checked with ``old``, commits
    first: it was this node's, legitimately)."""
    result = conn.execute(sa.update(fences).where(fences.c.partition == partition, fences.c.token == old,
                                                  fences.c.token < new).values(token=new))
    return result.rowcount == 1


def check_all(conn: Connection, tokens: Mapping[int, int]) -> None:
    """``check`` for several partitions ({partition: token}) in one statement, the rows locked in
    partition order (two transactions never wait on each other in a cycle)."""
    held = _locked(conn, tokens)
    for partition, token in sorted(tokens.items()):
        if held.get(partition) != token:
            raise Fenced(f"partition {partition}: lease token {token} superseded by {held.get(partition)}")


def superseded(conn: Connection, tokens: Mapping[int, int]) -> set[int]:
    """The partitions of ``tokens`` ({partition: token}) a newer owner claimed, the fence rows of
    all locked as ``check_all`` locks them: a transaction writes for the others only."""
    held = _locked(conn, tokens)
    return {partition for partition, token in tokens.items() if held.get(partition) != token}


def _locked(conn: Connection, tokens: Mapping[int, int]) -> dict[int, int]:
    if not tokens:
        return {}
    return dict(conn.execute(sa.select(fences.c.partition, fences.c.token)
                             .where(fences.c.partition.in_(sorted(tokens))).order_by(fences.c.partition)
                             .with_for_update()).all())


def check(conn: Connection, partition: int, token: int) -> None:
    """In the batch's transaction: lock the fence row and raise ``Fenced`` unless it is ``token``."""
    held = conn.execute(sa.select(fences.c.token).where(fences.c.partition == partition).with_for_update()).scalar()
    if held != token:
        raise Fenced(f"partition {partition}: lease token {token} superseded by {held}")
