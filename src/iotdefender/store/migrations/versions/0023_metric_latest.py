"""latest values: each device's latest datapoint per numeric series

Expand only: a new table and an index on ``metric_segments``, built concurrently on PostgreSQL
(store/online_index.py). Releases before it neither read nor write the table; this
release's readers fold the segments after what the table holds, so a table that is behind, or
empty, gives the same answer, later.

Revision ID: 0023
Revises: 0022
"""

import sqlalchemy as sa
from alembic import op

from iotdefender.store.online_index import create_index_online

revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The index is built after a commit (store/online_index.py): an upgrade cut short during the
    # build committed the table without the revision, and its next run finds the table there.
    if not sa.inspect(op.get_bind()).has_table('metric_latest'):
        _create_table()
    create_index_online('ix_metric_segments_series_id', 'metric_segments', ['series', 'id'])


def _create_table() -> None:
    op.create_table('metric_latest',
    sa.Column('series', sa.String(length=400), nullable=False),
    sa.Column('up_to_segment', sa.BigInteger(), nullable=False),
    sa.Column('things', sa.LargeBinary(), nullable=False),
    sa.Column('times', sa.LargeBinary(), nullable=False),
    sa.Column('vals', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('series')
    )


def downgrade() -> None:
    op.drop_index('ix_metric_segments_series_id', table_name='metric_segments')
    op.drop_table('metric_latest')
