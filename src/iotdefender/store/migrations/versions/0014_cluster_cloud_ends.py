"""cluster mode: each publisher's latest end of window in each partition (cloud/window_ends.py)

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cluster_cloud_ends',
    sa.Column('partition', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('node', sa.String(length=200), nullable=False),
    sa.Column('began_window', sa.BigInteger(), nullable=False),
    sa.Column('since_window', sa.BigInteger(), nullable=False),
    sa.Column('window_index', sa.BigInteger(), nullable=False),
    sa.Column('last', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('partition', 'node')
    )


def downgrade() -> None:
    op.drop_table('cluster_cloud_ends')
