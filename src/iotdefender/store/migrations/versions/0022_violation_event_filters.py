"""violation events: indexes for the profile and behavior filters

Expand only: two indexes. ListViolationEvents with ``securityProfileName`` and the console's
behavior filter read every event of the time range to find a profile's or a behavior's; with an
index per filter (and the time after it, as the thing's) they read those events only. Built
concurrently on PostgreSQL (store/online_index.py): the previous release's nodes keep inserting events.

Revision ID: 0022
Revises: 0021
"""

from alembic import op

from iotdefender.store.online_index import create_index_online

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_index_online('ix_violation_events_profile_time', 'violation_events', ['profile_name', 'event_time'])
    create_index_online('ix_violation_events_behavior_time', 'violation_events', ['behavior_name', 'event_time'])


def downgrade() -> None:
    op.drop_index('ix_violation_events_behavior_time', table_name='violation_events')
    op.drop_index('ix_violation_events_profile_time', table_name='violation_events')
