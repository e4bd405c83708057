"""cloud-side metrics: the devices disconnected at the end of the last window closed, and since when

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cloud_disconnected',
    sa.Column('thing', sa.String(length=128), nullable=False),
    sa.Column('partition', sa.Integer(), nullable=False),
    sa.Column('since', sa.Float(precision=53), nullable=False),
    sa.PrimaryKeyConstraint('thing')
    )
    op.create_index(op.f('ix_cloud_disconnected_partition'), 'cloud_disconnected', ['partition'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_cloud_disconnected_partition'), table_name='cloud_disconnected')
    op.drop_table('cloud_disconnected')
