"""Alembic environment: runs migrations on the engine the service hands over.

Cluster nodes share one PostgreSQL database and may start together: each takes a transaction-scoped
advisory lock before Alembic reads the current revision, so the upgrades run one after another and
a later node finds the schema at head (PostgreSQL's DDL is transactional: the lock is held until
the whole upgrade commits). SQLite belongs to one process and needs none.
"""

from alembic import context
from sqlalchemy import text

from iotdefender.store.schema import metadata

# Any constant that no other advisory lock of the database uses ('iotd' 'mig1' as two 32-bit words).
MIGRATION_LOCK = 0x696F7464_6D696731

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()
    connection.commit()
