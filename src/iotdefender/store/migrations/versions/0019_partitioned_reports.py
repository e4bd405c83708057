"""cluster mode: retained reports carry their thing's partition

Expand only: a nullable column without a default (no table rewrite) and no index. A takeover reads
the rows not compacted yet by id and filters them by partition in the server (store/history.py).

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('metric_values', sa.Column('partition', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('metric_values') as batch:
        batch.drop_column('partition')
