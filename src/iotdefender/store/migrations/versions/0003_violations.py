"""detection: alarm states, violations, events, verification, alert outbox

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('active_violations',
    sa.Column('violation_id', sa.String(length=128), nullable=False),
    sa.Column('thing_name', sa.String(length=128), nullable=False),
    sa.Column('profile_name', sa.String(length=128), nullable=False),
    sa.Column('behavior_name', sa.String(length=128), nullable=False),
    sa.Column('behavior', sa.JSON(), nullable=False),
    sa.Column('criteria_type', sa.String(length=20), nullable=False),
    sa.Column('suppressed', sa.Boolean(), nullable=False),
    sa.Column('last_violation_value', sa.JSON(), nullable=True),
    sa.Column('last_violation_time', sa.Float(precision=53), nullable=True),
    sa.Column('violation_start_time', sa.Float(precision=53), nullable=False),
    sa.PrimaryKeyConstraint('violation_id')
    )

    with op.batch_alter_table('active_violations', schema=None) as batch_op:
        batch_op.create_index('ix_active_violations_profile', ['profile_name'], unique=False)
        batch_op.create_index('ix_active_violations_thing', ['thing_name'], unique=False)

    op.create_table('alarm_states',
    sa.Column('thing_name', sa.String(length=128), nullable=False),
    sa.Column('profile_name', sa.String(length=128), nullable=False),
    sa.Column('behavior_name', sa.String(length=128), nullable=False),
    sa.Column('dimension', sa.String(length=140), nullable=False),
    sa.Column('state', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('thing_name', 'profile_name', 'behavior_name', 'dimension')
    )

    op.create_table('alert_outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('target_arn', sa.String(length=2048), nullable=False),
    sa.Column('destination', sa.String(length=2048), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(precision=53), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.Float(precision=53), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )

    with op.batch_alter_table('alert_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_alert_outbox_due', ['status', 'next_attempt_at'], unique=False)

    op.create_table('violation_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('violation_id', sa.String(length=128), nullable=False),
    sa.Column('event_type', sa.String(length=20), nullable=False),
    sa.Column('thing_name', sa.String(length=128), nullable=False),
    sa.Column('profile_name', sa.String(length=128), nullable=False),
    sa.Column('behavior', sa.JSON(), nullable=False),
    sa.Column('criteria_type', sa.String(length=20), nullable=False),
    sa.Column('suppressed', sa.Boolean(), nullable=False),
    sa.Column('metric_value', sa.JSON(), nullable=True),
    sa.Column('event_time', sa.Float(precision=53), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )

    with op.batch_alter_table('violation_events', schema=None) as batch_op:
        batch_op.create_index('ix_violation_events_time', ['event_time'], unique=False)
        batch_op.create_index('ix_violation_events_violation', ['violation_id'], unique=False)

    op.create_table('violation_verification',
    sa.Column('violation_id', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('description', sa.String(length=1000), nullable=True),
    sa.PrimaryKeyConstraint('violation_id')
    )


def downgrade() -> None:
    op.drop_table('violation_verification')
    op.drop_table('violation_events')
    op.drop_table('alert_outbox')
    op.drop_table('alarm_states')
    op.drop_table('active_violations')
