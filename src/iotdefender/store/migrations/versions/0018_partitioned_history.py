"""cluster mode: alarm states and compacted segments carry their things' partition

Expand only: a node of the previous release writes rows without it (NULL), which every reader still
reads (store/partition_selection.py), so nodes of both releases can run side by side.

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('alarm_states', sa.Column('partition', sa.Integer(), nullable=True))
    op.create_index('ix_alarm_states_partition', 'alarm_states', ['partition'])
    op.add_column('metric_segments', sa.Column('partition', sa.Integer(), nullable=True))
    op.create_index('ix_metric_segments_series_partition_time', 'metric_segments',
                    ['series', 'partition', 'max_ts'])


def downgrade() -> None:
    op.drop_index('ix_metric_segments_series_partition_time', table_name='metric_segments')
    with op.batch_alter_table('metric_segments') as batch:
        batch.drop_column('partition')
    op.drop_index('ix_alarm_states_partition', table_name='alarm_states')
    with op.batch_alter_table('alarm_states') as batch:
        batch.drop_column('partition')
