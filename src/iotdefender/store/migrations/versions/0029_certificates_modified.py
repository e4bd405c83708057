"""An index on the certificates' last_modified_date

Expand only: each broker node reads the certificates written since its last read every 30 s
without a write (brokers/certificate_gate.py); without the index that read scanned the whole
table (82-322 ms at 105,000 certificates on SQLite). A node of a release before ignores it.

Revision ID: 0029
Revises: 0028
"""

from alembic import op

revision = '0029'
down_revision = '0028'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_certificates_modified', 'certificates', ['last_modified_date'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_certificates_modified', table_name='certificates')
