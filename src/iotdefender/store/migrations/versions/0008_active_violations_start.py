"""active violations by start time: ListActiveViolations pages in (violationStartTime, violationId) order

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_active_violations_start', 'active_violations', ['violation_start_time', 'violation_id'])


def downgrade() -> None:
    op.drop_index('ix_active_violations_start', table_name='active_violations')
