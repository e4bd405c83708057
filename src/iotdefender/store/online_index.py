"""Indexes that migrations build without holding up writes to their table.

A plain ``CREATE INDEX`` on PostgreSQL takes a lock that blocks every insert into the table until
the index is built. In a rolling upgrade (docs/cluster.md) nodes of the previous release keep
writing while the first node of the next one migrates: at tens of millions of violation events an
index build took long enough for their transactions to wait past the database round-trip limit, and
a node that waits that long is taken for an outage. ``CREATE INDEX CONCURRENTLY`` lets writes go
on; it cannot run in a transaction (``autocommit_block``), which is why the migration lock is a
session lock (``migrations/env.py``). SQLite has one writer and builds the index in the migration's
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# A build that was cut short (a node killed during it) leaves an index marked invalid, which
# ``IF NOT EXISTS`` would keep: it is dropped and built again.
_INVALID = sa.text("SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                   "WHERE c.relname = :name AND NOT i.indisvalid")


def create_index_online(name: str, table: str, columns: Sequence[str]) -> None:
    """``op.create_index``, without blocking writes to ``table`` on PostgreSQL."""
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(name, table, list(columns))
        return
    with op.get_context().autocommit_block():
        if op.get_bind().execute(_INVALID, {"name": name}).first() is not None:
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
        op.create_index(name, table, list(columns), postgresql_concurrently=True, if_not_exists=True)
