"""Detect mitigation: mitigation actions, Detect mitigation tasks and their executions

Expand only: new tables (controlplane/mitigation_actions.py, controlplane/detect_mitigation_tasks.py).
A node of a release before answers the operations NotImplementedException and runs no task.

Revision ID: 0027
Revises: 0026
"""

import sqlalchemy as sa
from alembic import op

revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mitigation_actions',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('arn', sa.String(length=2048), nullable=False),
    sa.Column('action_id', sa.String(length=64), nullable=False),
    sa.Column('action_type', sa.String(length=40), nullable=False),
    sa.Column('role_arn', sa.String(length=2048), nullable=False),
    sa.Column('action_params', sa.JSON(), nullable=False),
    sa.Column('creation_date', sa.Float(precision=53), nullable=False),
    sa.Column('last_modified_date', sa.Float(precision=53), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('detect_mitigation_tasks',
    sa.Column('task_id', sa.String(length=128), nullable=False),
    sa.Column('client_request_token', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('start_time', sa.Float(precision=53), nullable=False),
    sa.Column('end_time', sa.Float(precision=53), nullable=True),
    sa.Column('target', sa.JSON(), nullable=False),
    sa.Column('occurrence_range', sa.JSON(), nullable=True),
    sa.Column('only_active', sa.Boolean(), nullable=False),
    sa.Column('include_suppressed', sa.Boolean(), nullable=False),
    sa.Column('actions', sa.JSON(), nullable=False),
    sa.Column('planned', sa.Boolean(), nullable=False),
    sa.Column('claimed_by', sa.String(length=200), nullable=True),
    sa.Column('claimed_until', sa.Float(precision=53), nullable=True),
    sa.PrimaryKeyConstraint('task_id')
    )
    op.create_index('ix_detect_mitigation_tasks_start', 'detect_mitigation_tasks', ['start_time', 'task_id'],
                    unique=False)
    op.create_index('ix_detect_mitigation_tasks_status', 'detect_mitigation_tasks', ['status'], unique=False)
    op.create_table('detect_mitigation_executions',
    sa.Column('task_id', sa.String(length=128), nullable=False),
    sa.Column('violation_id', sa.String(length=128), nullable=False),
    sa.Column('position', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('action_name', sa.String(length=128), nullable=False),
    sa.Column('thing_name', sa.String(length=128), nullable=False),
    sa.Column('start_date', sa.Float(precision=53), nullable=True),
    sa.Column('end_date', sa.Float(precision=53), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('message', sa.String(length=2048), nullable=True),
    sa.Column('listed_at', sa.Float(precision=53), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['detect_mitigation_tasks.task_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', 'violation_id', 'position')
    )
    op.create_index('ix_detect_mitigation_executions_thing', 'detect_mitigation_executions',
                    ['thing_name', 'listed_at'], unique=False)
    op.create_index('ix_detect_mitigation_executions_violation', 'detect_mitigation_executions',
                    ['violation_id'], unique=False)
    op.create_index('ix_detect_mitigation_executions_listed', 'detect_mitigation_executions',
                    ['listed_at', 'task_id'], unique=False)


def downgrade() -> None:
    op.drop_table('detect_mitigation_executions')
    op.drop_index('ix_detect_mitigation_tasks_status', table_name='detect_mitigation_tasks')
    op.drop_index('ix_detect_mitigation_tasks_start', table_name='detect_mitigation_tasks')
    op.drop_table('detect_mitigation_tasks')
    op.drop_table('mitigation_actions')
