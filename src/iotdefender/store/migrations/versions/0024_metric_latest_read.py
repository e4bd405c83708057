"""latest values: when each series' fold was last read

Expand only: a nullable column. The fold is kept up to date only for series read (or first seen)
within the last week (store/latest_values.py): rewriting every series' row cost about as many
bytes as the history itself, which at 10M devices doubled its writes for series no one looked at.
Releases before it ignore the column.

Revision ID: 0024
Revises: 0023
"""

import sqlalchemy as sa
from alembic import op

revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if 'read_at' not in {column['name'] for column in sa.inspect(op.get_bind()).get_columns('metric_latest')}:
        op.add_column('metric_latest', sa.Column('read_at', sa.Float(precision=53), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('metric_latest') as batch:
        batch.drop_column('read_at')
