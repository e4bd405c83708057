"""control plane: security profiles, targets, custom metrics, dimensions, tags, registry

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('custom_metrics',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('arn', sa.String(length=2048), nullable=False),
    sa.Column('metric_type', sa.String(length=32), nullable=False),
    sa.Column('display_name', sa.String(length=128), nullable=True),
    sa.Column('client_request_token', sa.String(length=64), nullable=True),
    sa.Column('creation_date', sa.Float(precision=53), nullable=False),
    sa.Column('last_modified_date', sa.Float(precision=53), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('dimensions',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('arn', sa.String(length=2048), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('string_values', sa.JSON(), nullable=False),
    sa.Column('client_request_token', sa.String(length=64), nullable=True),
    sa.Column('creation_date', sa.Float(precision=53), nullable=False),
    sa.Column('last_modified_date', sa.Float(precision=53), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('security_profiles',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('arn', sa.String(length=2048), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('behaviors', sa.JSON(), nullable=False),
    sa.Column('alert_targets', sa.JSON(), nullable=True),
    sa.Column('additional_metrics_to_retain', sa.JSON(), nullable=True),
    sa.Column('additional_metrics_to_retain_v2', sa.JSON(), nullable=True),
    sa.Column('metrics_export_config', sa.JSON(), nullable=True),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('creation_date', sa.Float(precision=53), nullable=False),
    sa.Column('last_modified_date', sa.Float(precision=53), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('tags',
    sa.Column('resource_arn', sa.String(length=2048), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('value', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('resource_arn', 'key')
    )
    op.create_table('thing_groups',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('group_id', sa.String(length=64), nullable=False),
    sa.Column('arn', sa.String(length=2048), nullable=False),
    sa.Column('parent_name', sa.String(length=128), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('attributes', sa.JSON(), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('creation_date', sa.Float(precision=53), nullable=False),
    sa.ForeignKeyConstraint(['parent_name'], ['thing_groups.name'], ),
    sa.PrimaryKeyConstraint('name'),
    sa.UniqueConstraint('group_id')
    )
    with op.batch_alter_table('thing_groups', schema=None) as batch_op:
        batch_op.create_index('ix_thing_groups_parent', ['parent_name'], unique=False)

    op.create_table('things',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('thing_id', sa.String(length=64), nullable=False),
    sa.Column('arn', sa.String(length=2048), nullable=False),
    sa.Column('thing_type_name', sa.String(length=128), nullable=True),
    sa.Column('attributes', sa.JSON(), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('creation_date', sa.Float(precision=53), nullable=False),
    sa.PrimaryKeyConstraint('name'),
    sa.UniqueConstraint('thing_id')
    )
    op.create_table('security_profile_targets',
    sa.Column('profile_name', sa.String(length=128), nullable=False),
    sa.Column('target_arn', sa.String(length=2048), nullable=False),
    sa.Column('attached_at', sa.Float(precision=53), nullable=False),
    sa.ForeignKeyConstraint(['profile_name'], ['security_profiles.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('profile_name', 'target_arn')
    )
    with op.batch_alter_table('security_profile_targets', schema=None) as batch_op:
        batch_op.create_index('ix_security_profile_targets_target', ['target_arn'], unique=False)

    op.create_table('thing_group_members',
    sa.Column('group_name', sa.String(length=128), nullable=False),
    sa.Column('thing_name', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['group_name'], ['thing_groups.name'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['thing_name'], ['things.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('group_name', 'thing_name')
    )
    with op.batch_alter_table('thing_group_members', schema=None) as batch_op:
        batch_op.create_index('ix_thing_group_members_thing', ['thing_name'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('thing_group_members', schema=None) as batch_op:
        batch_op.drop_index('ix_thing_group_members_thing')

    op.drop_table('thing_group_members')
    with op.batch_alter_table('security_profile_targets', schema=None) as batch_op:
        batch_op.drop_index('ix_security_profile_targets_target')

    op.drop_table('security_profile_targets')
    op.drop_table('things')
    with op.batch_alter_table('thing_groups', schema=None) as batch_op:
        batch_op.drop_index('ix_thing_groups_parent')

    op.drop_table('thing_groups')
    op.drop_table('tags')
    op.drop_table('security_profiles')
    op.drop_table('dimensions')
    op.drop_table('custom_metrics')
