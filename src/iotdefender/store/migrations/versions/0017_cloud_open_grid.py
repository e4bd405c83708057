"""cloud-side metrics: the window open at the last graceful stop, kept even when idle

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cloud_open_grid',
    sa.Column('window_index', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.PrimaryKeyConstraint('window_index')
    )


def downgrade() -> None:
    op.drop_table('cloud_open_grid')
