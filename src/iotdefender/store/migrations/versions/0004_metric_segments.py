"""history: columnar segments of numeric datapoints for backtests and fleet statistics

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table('metric_segments',
    sa.Column('id', _ROW_ID, autoincrement=True, nullable=False),
    sa.Column('series', sa.String(length=400), nullable=False),
    sa.Column('min_ts', sa.Float(precision=53), nullable=False),
    sa.Column('max_ts', sa.Float(precision=53), nullable=False),
    sa.Column('points', sa.Integer(), nullable=False),
    sa.Column('things', sa.LargeBinary(), nullable=False),
    sa.Column('thing_index', sa.LargeBinary(), nullable=False),
    sa.Column('times', sa.LargeBinary(), nullable=False),
    sa.Column('vals', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_metric_segments_series_time', 'metric_segments', ['series', 'min_ts', 'max_ts'])
    op.create_table('history_compaction',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('last_row_id', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('history_compaction')
    op.drop_index('ix_metric_segments_series_time', table_name='metric_segments')
    op.drop_table('metric_segments')
