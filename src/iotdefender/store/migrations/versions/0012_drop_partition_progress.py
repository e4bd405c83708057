"""cluster mode: drop the per-partition progress mark; redeliveries are recognised by each thing's report id

A "highest stream sequence committed" per partition counted a delivery that came back after newer
ones were committed (lost with a NATS server, or nakked) as stored although it never was;
pipeline/partition_store.py explains the rule that replaced it.

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
    op.drop_table('cluster_partition_progress')


def downgrade() -> None:
    op.create_table('cluster_partition_progress',
    sa.Column('partition', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('last_sequence', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('partition')
    )
