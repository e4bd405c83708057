"""cluster mode: the parts of the last window closed are kept until the next is closed, and named
(``cluster_cloud_progress.seen_window``), so a successor knows who saw whom in it

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('cluster_cloud_progress', sa.Column('seen_window', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('cluster_cloud_progress') as batch:
        batch.drop_column('seen_window')
