"""cluster mode: whether a publisher of cloud window parts hosts its devices' connections

Expand only: a column with a default. A detect node takes the devices of a broker node that went
silent (killed) as disconnected (cloud/cluster_windows.py); an end kept by a node of the release
before, which does not write the column, is taken as not hosting: its silence ends no connection,
as before.

Revision ID: 0025
Revises: 0024
"""

import sqlalchemy as sa
from alembic import op

revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if 'hosts' not in {column['name'] for column in sa.inspect(op.get_bind()).get_columns('cluster_cloud_ends')}:
        op.add_column('cluster_cloud_ends', sa.Column('hosts', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('cluster_cloud_ends') as batch:
        batch.drop_column('hosts')
