"""device metrics: retained datapoints per report and report state per thing

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('metric_values',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('thing_name', sa.String(length=128), nullable=False),
    sa.Column('ts', sa.Float(precision=53), nullable=False),
    sa.Column('datapoints', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )

    with op.batch_alter_table('metric_values', schema=None) as batch_op:
        batch_op.create_index('ix_metric_values_thing_ts', ['thing_name', 'ts'], unique=False)
        batch_op.create_index('ix_metric_values_ts', ['ts'], unique=False)

    op.create_table('thing_report_state',
    sa.Column('thing_name', sa.String(length=128), nullable=False),
    sa.Column('last_report_id', sa.BigInteger(), nullable=False),
    sa.Column('last_report_at', sa.Float(precision=53), nullable=False),
    sa.PrimaryKeyConstraint('thing_name')
    )


def downgrade() -> None:
    op.drop_table('thing_report_state')
    op.drop_table('metric_values')
