"""ML Detect: the training progress of each ML behavior and every model version built

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ml_training',
    sa.Column('profile_name', sa.String(length=128), nullable=False),
    sa.Column('behavior_name', sa.String(length=128), nullable=False),
    sa.Column('series', sa.String(length=400), nullable=False),
    sa.Column('dimension', sa.String(length=140), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('collection_start', sa.Float(precision=53), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('datapoints', sa.BigInteger(), nullable=False),
    sa.Column('datapoints_percentage', sa.Float(), nullable=False),
    sa.Column('last_attempt_at', sa.Float(precision=53), nullable=True),
    sa.Column('last_refresh_at', sa.Float(precision=53), nullable=True),
    sa.Column('active_version', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['profile_name'], ['security_profiles.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('profile_name', 'behavior_name')
    )
    op.create_table('ml_models',
    sa.Column('profile_name', sa.String(length=128), nullable=False),
    sa.Column('behavior_name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('series', sa.String(length=400), nullable=False),
    sa.Column('dimension', sa.String(length=140), nullable=False),
    sa.Column('window_start', sa.Float(precision=53), nullable=False),
    sa.Column('window_end', sa.Float(precision=53), nullable=False),
    sa.Column('datapoints', sa.BigInteger(), nullable=False),
    sa.Column('devices', sa.Integer(), nullable=False),
    sa.Column('trained_at', sa.Float(precision=53), nullable=False),
    sa.Column('model', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['profile_name'], ['security_profiles.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('profile_name', 'behavior_name', 'version')
    )


def downgrade() -> None:
    op.drop_table('ml_models')
    op.drop_table('ml_training')
