"""cluster mode: the registry keeps each thing's partition

Expand only: a nullable column and an index. A detect node closing cloud-side windows fills it in
for the things that have none (those registered since, by any node of any release) and reads the
registered names of its own partitions only, where it read the whole registry at every window.

Revision ID: 0021
Revises: 0020
"""

import sqlalchemy as sa
from alembic import op

from iotdefender.store.online_index import create_index_online

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The index is built after a commit (store/online_index.py): an upgrade cut short during the
    # build committed the column without the revision, and its next run finds the column there.
    if 'partition' not in {column['name'] for column in sa.inspect(op.get_bind()).get_columns('things')}:
        op.add_column('things', sa.Column('partition', sa.Integer(), nullable=True))
    create_index_online('ix_things_partition', 'things', ['partition'])


def downgrade() -> None:
    op.drop_index('ix_things_partition', table_name='things')
    with op.batch_alter_table('things') as batch:
        batch.drop_column('partition')
