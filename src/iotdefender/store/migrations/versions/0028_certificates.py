"""Device certificates and their status (RegisterCertificate, UpdateCertificate, ...)

Expand only: a new table (controlplane/certificates.py). A node of a release before answers the
certificate operations NotImplementedException, and its broker refuses no certificate.

Revision ID: 0028
Revises: 0027
"""

import sqlalchemy as sa
from alembic import op

revision = '0028'
down_revision = '0027'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('certificates',
    sa.Column('certificate_id', sa.String(length=64), nullable=False),
    sa.Column('arn', sa.String(length=2048), nullable=False),
    sa.Column('pem', sa.Text(), nullable=False),
    sa.Column('common_name', sa.String(length=256), nullable=True),
    sa.Column('ca_certificate_id', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('certificate_mode', sa.String(length=16), nullable=False),
    sa.Column('not_before', sa.Float(precision=53), nullable=False),
    sa.Column('not_after', sa.Float(precision=53), nullable=False),
    sa.Column('customer_version', sa.Integer(), nullable=False),
    sa.Column('generation_id', sa.String(length=64), nullable=False),
    sa.Column('creation_date', sa.Float(precision=53), nullable=False),
    sa.Column('last_modified_date', sa.Float(precision=53), nullable=False),
    sa.PrimaryKeyConstraint('certificate_id')
    )
    op.create_index('ix_certificates_created', 'certificates', ['creation_date', 'certificate_id'], unique=False)
    op.create_index('ix_certificates_status', 'certificates', ['status'], unique=False)
    op.create_index('ix_certificates_common_name', 'certificates', ['common_name'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_certificates_common_name', table_name='certificates')
    op.drop_index('ix_certificates_status', table_name='certificates')
    op.drop_index('ix_certificates_created', table_name='certificates')
    op.drop_table('certificates')
