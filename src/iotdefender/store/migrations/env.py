"""Alembic environment: runs migrations on the engine the service hands over.

Cluster nodes share one PostgreSQL database and may start together, so the upgrades run one after
another: a node takes a session advisory lock before Alembic reads the current revision, and a
later node finds the schema at head. The lock is a session lock, held on a connection of its own
in autocommit, so that a migration may build an index with ``CREATE INDEX CONCURRENTLY``
(``store/online_index.py``), which runs outside any transaction and commits what came before it.
A node waiting for the lock polls ``pg_try_advisory_lock`` rather than blocking in
``pg_advisory_lock``: a concurrent index build waits for every transaction of the database that
holds a snapshot, and a statement blocked on the lock would hold one until the build ended, which
waits for it. Each migration runs in a transaction of its own (``transaction_per_migration``): a
node killed between two resumes from the last one committed. SQLite belongs to one process and
needs no lock.
"""

import time

from alembic import context
from sqlalchemy import text

from iotdefender.store.schema import metadata

# Any constant that no other advisory lock of the database uses ('iotd' 'mig1' as two 32-bit words).
MIGRATION_LOCK = 0x696F7464_6D696731
LOCK_POLL_S = 0.2

engine = context.config.attributes["engine"]
lock = None
if engine.dialect.name == "postgresql":
    lock = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    while not lock.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK}).scalar():
        time.sleep(LOCK_POLL_S)
try:
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                          transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
finally:
    if lock is not None:
        lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
        lock.close()
