"""cluster mode: cloud window parts kept a set per row

Expand only: a new table. Nodes of this release write it once every live node reads it (the
``cloud-part-sets`` announcement) and read it beside ``cluster_cloud_parts``, which the release
before writes; closing a window deletes from both.

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cluster_cloud_part_sets',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('partition', sa.Integer(), nullable=False),
    sa.Column('window_index', sa.BigInteger(), nullable=False),
    sa.Column('node', sa.String(length=200), nullable=False),
    sa.Column('things_digest', sa.LargeBinary(), nullable=False),
    sa.Column('parts', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('partition', 'window_index', 'node', 'things_digest', name='uq_cluster_cloud_part_sets_set')
    )


def downgrade() -> None:
    op.drop_table('cluster_cloud_part_sets')
