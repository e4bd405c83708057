"""cluster mode: partition fences (fencing tokens) and partition progress (last committed stream sequence)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cluster_partition_fences',
    sa.Column('partition', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('token', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('partition')
    )
    op.create_table('cluster_partition_progress',
    sa.Column('partition', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('last_sequence', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('partition')
    )


def downgrade() -> None:
    op.drop_table('cluster_partition_progress')
    op.drop_table('cluster_partition_fences')
