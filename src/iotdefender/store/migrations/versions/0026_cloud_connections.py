"""cluster mode: where each device's connection is, for the next owner of its partition

Expand only: a new table. A detect node records the broker node, address and start of each
device's connection when it changes (cloud/cluster_windows.py), and the next owner of the
partition reads them: a broker node killed after the takeover has its idle devices counted as
disconnected, and an idle device keeps its address. Releases before it neither write nor read it.

Revision ID: 0026
Revises: 0025
"""

import sqlalchemy as sa
from alembic import op

revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cluster_cloud_connections',
    sa.Column('thing', sa.String(length=128), nullable=False),
    sa.Column('partition', sa.Integer(), nullable=False),
    sa.Column('node', sa.String(length=200), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('since', sa.Float(precision=53), nullable=False),
    sa.PrimaryKeyConstraint('thing')
    )
    op.create_index(op.f('ix_cluster_cloud_connections_partition'), 'cluster_cloud_connections', ['partition'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_cluster_cloud_connections_partition'), table_name='cluster_cloud_connections')
    op.drop_table('cluster_cloud_connections')
