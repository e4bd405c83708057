"""violation events: indexes for the profile and behavior filters

Expand only: two indexes. ListViolationEvents with ``securityProfileName`` and the console's
behavior filter read every event of the time range to find a profile's or a behavior's; with an
index per filter (and the time after it, as the thing's) they read those events only.

Revision ID: 0022
Revises: 0021
"""

from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_violation_events_profile_time', 'violation_events', ['profile_name', 'event_time'])
    op.create_index('ix_violation_events_behavior_time', 'violation_events', ['behavior_name', 'event_time'])


def downgrade() -> None:
    op.drop_index('ix_violation_events_behavior_time', table_name='violation_events')
    op.drop_index('ix_violation_events_profile_time', table_name='violation_events')
