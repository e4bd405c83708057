"""cloud-side windows open at a graceful stop, kept for the next start

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cloud_open_windows',
    sa.Column('window_index', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('thing', sa.String(length=128), nullable=False),
    sa.Column('part', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('window_index', 'thing')
    )


def downgrade() -> None:
    op.drop_table('cloud_open_windows')
