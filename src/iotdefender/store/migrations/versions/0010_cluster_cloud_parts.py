"""cluster mode: cloud-side window parts kept until their window is closed, and each partition's closing progress

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cluster_cloud_parts',
    sa.Column('partition', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('window_index', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('thing', sa.String(length=128), nullable=False),
    sa.Column('node', sa.String(length=200), nullable=False),
    sa.Column('part', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('partition', 'window_index', 'thing', 'node')
    )
    op.create_table('cluster_cloud_progress',
    sa.Column('partition', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('window_index', sa.BigInteger(), nullable=False),
    sa.Column('through_thing', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('partition')
    )


def downgrade() -> None:
    op.drop_table('cluster_cloud_progress')
    op.drop_table('cluster_cloud_parts')
