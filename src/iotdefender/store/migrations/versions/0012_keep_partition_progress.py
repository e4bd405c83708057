"""cluster mode: the per-partition progress mark is no longer used, and is kept (dropped one release later)

A "highest stream sequence committed" per partition counted a delivery that came back after newer
ones were committed (lost with a NATS server, or nakked) as stored although it never was;
pipeline/partition_store.py explains the rule that replaced it (each thing's report id).

This migration first dropped ``cluster_partition_progress``. In a rolling upgrade the first node
of this release runs the migrations while nodes of the previous release still run, and those write
the table in every detect transaction: after the drop, every report of their partitions was
answered ``InternalError`` until they were replaced (docs/cluster.md, "Rolling upgrades"). So it
now changes nothing: the table stays while nodes of the previous release may live, and a later
release's contract migration drops it (``DROP TABLE IF EXISTS``: databases that ran the first
version of this migration have no such table, and nothing of this release reads or writes it).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    # 0011's schema has the table; a database that ran the dropping version of 0012 lacks it.
    if not sa.inspect(op.get_bind()).has_table('cluster_partition_progress'):
        op.create_table('cluster_partition_progress',
        sa.Column('partition', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('last_sequence', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('partition')
        )
