"""violation events: behavior_name column (console filters) and a (thing, time) index

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('violation_events') as batch:
        batch.add_column(sa.Column('behavior_name', sa.String(length=128), nullable=True))
    events = sa.table('violation_events', sa.column('id', sa.Integer), sa.column('behavior', sa.JSON),
                      sa.column('behavior_name', sa.String))
    bind = op.get_bind()
    rows = bind.execute(sa.select(events.c.id, events.c.behavior)).all()
    for row_id, behavior in rows:  # existing events keep their behavior's name
        name = behavior.get('name') if isinstance(behavior, dict) else None
        bind.execute(events.update().where(events.c.id == row_id).values(behavior_name=name))
    op.create_index('ix_violation_events_thing_time', 'violation_events', ['thing_name', 'event_time'])


def downgrade() -> None:
    op.drop_index('ix_violation_events_thing_time', table_name='violation_events')
    with op.batch_alter_table('violation_events') as batch:
        batch.drop_column('behavior_name')
