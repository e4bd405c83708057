"""security profile versions: every version a profile has had, for the console's history and diff

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_DOCUMENT_COLUMNS = ('description', 'behaviors', 'alert_targets', 'additional_metrics_to_retain',
                     'additional_metrics_to_retain_v2', 'metrics_export_config')


def upgrade() -> None:
    op.create_table('security_profile_versions',
    sa.Column('profile_name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('modified_at', sa.Float(precision=53), nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['profile_name'], ['security_profiles.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('profile_name', 'version')
    )
    # Existing profiles start their history at their current version: the older ones were not kept.
    profiles = sa.table('security_profiles', sa.column('name', sa.String), sa.column('version', sa.BigInteger),
                        sa.column('last_modified_date', sa.Float),
                        *(sa.column(c, sa.JSON if c != 'description' else sa.Text) for c in _DOCUMENT_COLUMNS))
    versions = sa.table('security_profile_versions', sa.column('profile_name', sa.String),
                        sa.column('version', sa.BigInteger), sa.column('modified_at', sa.Float),
                        sa.column('document', sa.JSON))
    bind = op.get_bind()
    for row in bind.execute(sa.select(profiles)).mappings().all():
        bind.execute(versions.insert().values(profile_name=row['name'], version=row['version'],
                                              modified_at=row['last_modified_date'],
                                              document={c: row[c] for c in _DOCUMENT_COLUMNS}))


def downgrade() -> None:
    op.drop_table('security_profile_versions')
