"""Fencing tokens in PostgreSQL: a node that lost a partition cannot commit for it any more.

A lease in NATS says who *should* own a partition; it cannot stop a paused or partitioned process
that still believes it owns one (Kleppmann, "How to do distributed locking": a lock needs a fencing
token checked by the storage). The token is the KV revision at which the node acquired the lease;
revisions of a bucket only grow, so a later owner always holds a larger token.

- ``claim`` runs when a node acquires a partition, before it loads the partition's alarm states:
  it raises the partition's fence to the new token (never lowers it).
- ``check`` runs inside every batch transaction, before its commit: it locks the fence row and
  fails with ``Fenced`` unless the fence still equals the node's token. A claim by a newer owner
  either commits first (the stale commit sees the higher token and rolls back) or waits on the row
  lock until the stale transaction ends (the new owner then loads states that include it).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

#: Created by the cluster's migration when this is wired into the store (docs/cluster.md).
FENCES_DDL = ("CREATE TABLE IF NOT EXISTS cluster_partition_fences "
              "(partition integer PRIMARY KEY, token bigint NOT NULL)")


class Fenced(RuntimeError):
    """This node's lease on the partition was superseded: roll back, do not ack."""


def claim(conn: Connection, partition: int, token: int) -> bool:
    """Raise the fence of ``partition`` to ``token``; False if a newer owner already claimed it."""
    row = conn.execute(text(
        "INSERT INTO cluster_partition_fences (partition, token) VALUES (:p, :t) "
        "ON CONFLICT (partition) DO UPDATE SET token = excluded.token "
        "WHERE cluster_partition_fences.token <= excluded.token RETURNING token"), {"p": partition, "t": token})
    return row.first() is not None


def check(conn: Connection, partition: int, token: int) -> None:
    """In the batch's transaction: lock the fence row and raise ``Fenced`` unless it is ``token``."""
    held = conn.execute(text("SELECT token FROM cluster_partition_fences WHERE partition = :p FOR UPDATE"),
                        {"p": partition}).scalar()
    if held != token:
        raise Fenced(f"partition {partition}: lease token {token} superseded by {held}")
