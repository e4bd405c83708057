"""Certificates attached to things (AttachThingPrincipal, DetachThingPrincipal, ...)

Expand only: a new table, and a new nullable column on certificates with its index. A node of a
release before answers the thing-principal operations NotImplementedException, deletes a thing or
a certificate whatever is attached to it, and its broker keeps to the common-name rule.

Revision ID: 0030
Revises: 0029
"""

import sqlalchemy as sa
from alembic import op

revision = '0030'
down_revision = '0029'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('thing_principals',
    sa.Column('thing_name', sa.String(length=128), nullable=False),
    sa.Column('certificate_id', sa.String(length=64), nullable=False),
    sa.Column('exclusive', sa.Boolean(), nullable=False),
    sa.Column('attached_date', sa.Float(precision=53), nullable=False),
    sa.PrimaryKeyConstraint('thing_name', 'certificate_id')
    )
    op.create_index('ix_thing_principals_certificate', 'thing_principals', ['certificate_id', 'thing_name'],
                    unique=False)
    op.add_column('certificates', sa.Column('things_modified_date', sa.Float(precision=53), nullable=True))
    op.create_index('ix_certificates_things_modified', 'certificates', ['things_modified_date'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_certificates_things_modified', table_name='certificates')
    with op.batch_alter_table('certificates') as batch:
        batch.drop_column('things_modified_date')
    op.drop_index('ix_thing_principals_certificate', table_name='thing_principals')
    op.drop_table('thing_principals')
