"""The Alembic migrations build exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from iotdefender.store.database import HEAD_REVISION, create_engine, sqlite_url, upgrade_to_head
from iotdefender.store.schema import metadata


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrated_database_matches_schema(backend, request):
    url = (request.getfixturevalue("postgres").create_database(f"mig{time.time_ns()}") if backend == "postgresql"
           else sqlite_url(Path(tempfile.mkdtemp())))
    engine = create_engine(url)
    upgrade_to_head(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert differences == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_profiles_that_predate_version_history_start_it_at_their_version(backend, request):
    """Migration 0006 gives every existing profile one kept version: the one it is at."""
    import sqlalchemy as sa
    from alembic import command

    from iotdefender.store import profiles
    from iotdefender.store.database import alembic_config

    url = (request.getfixturevalue("postgres").create_database(f"mig{time.time_ns()}") if backend == "postgresql"
           else sqlite_url(Path(tempfile.mkdtemp())))
    engine = create_engine(url)
    command.upgrade(alembic_config(engine), "0005")
    behaviors = [{"name": "b", "metric": "aws:num-disconnects"}]
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO security_profiles (name, arn, description, behaviors, version, creation_date, "
            "last_modified_date) VALUES ('old', 'arn:old', 'before', :behaviors, 4, 1.0, 2.0)"),
            {"behaviors": '[{"name": "b", "metric": "aws:num-disconnects"}]'})
    upgrade_to_head(engine)
    with engine.connect() as conn:
        (kept,) = profiles.version_history(conn, "old")
    engine.dispose()
    assert kept["version"] == 4 and kept["modified_at"] == 2.0
    assert kept["document"]["description"] == "before" and kept["document"]["behaviors"] == behaviors



def test_nodes_migrating_one_postgresql_database_at_once_all_start(postgres):
    """Cluster nodes share one database and may all start together: the upgrade is serialised
    (an advisory lock), so a later node finds the schema at head instead of failing half-way.
    Separate processes, as nodes are (Alembic's environment is per process, not per thread)."""
    import subprocess
    import sys

    from sqlalchemy import text

    url = postgres.create_database(f"mig{time.time_ns()}")
    code = ("import sys; from iotdefender.store.database import create_engine, upgrade_to_head; "
            "upgrade_to_head(create_engine(sys.argv[1]))")
    nodes = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    failures = [(node.wait(timeout=120), node.stderr.read()[-600:]) for node in nodes if node.stderr]
    assert [f for f in failures if f[0] != 0] == []
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from alembic_version")).scalar() == 1
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_previous_release_writes_its_partition_progress_through_the_upgrade(backend, request):
    """Rolling upgrades (docs/cluster.md): nodes of the release at 0011 write
    ``cluster_partition_progress`` in every detect transaction while the first node of this release
    migrates the database; the table stays (its first 0012 dropped it: every such report failed).
    A database that ran that dropping 0012 still upgrades, and goes back to 0011's schema."""
    import sqlalchemy as sa
    from alembic import command

    from iotdefender.store.database import alembic_config

    url = (request.getfixturevalue("postgres").create_database(f"mig{time.time_ns()}") if backend == "postgresql"
           else sqlite_url(Path(tempfile.mkdtemp())))
    engine = create_engine(url)
    command.upgrade(alembic_config(engine), "0011")
    upgrade_to_head(engine)
    progress = "INSERT INTO cluster_partition_progress (partition, last_sequence) VALUES (3, 17)"
    with engine.begin() as conn:  # what a node of the previous release does in its detect transaction
        conn.execute(sa.text(progress))
    with engine.begin() as conn:  # the first, dropping 0012 ran on this database
        conn.execute(sa.text("DROP TABLE cluster_partition_progress"))
    upgrade_to_head(engine)
    command.downgrade(alembic_config(engine), "0011")
    with engine.begin() as conn:
        conn.execute(sa.text(progress))
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_node_of_the_previous_release_starts_on_a_database_a_later_release_migrated(backend, request):
    """Rolling upgrades: once the first node of the next release has migrated the database, a node
    of this release that (re)starts — after a crash, or to stop the upgrade — finds a revision it
    does not know. The next release's migrations only add, so it runs on that schema instead of
    refusing to start (it raised "Can't locate revision identified by ...")."""
    import sqlalchemy as sa

    url = (request.getfixturevalue("postgres").create_database(f"mig{time.time_ns()}") if backend == "postgresql"
           else sqlite_url(Path(tempfile.mkdtemp())))
    engine = create_engine(url)
    upgrade_to_head(engine)
    with engine.begin() as conn:  # what the next release's first node leaves: its own head
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9001'"))
    upgrade_to_head(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "9001"
    engine.dispose()


def test_an_index_is_built_while_the_previous_release_keeps_inserting(postgres):
    """In a rolling upgrade nodes of the previous release keep writing while the first node of the
    next migrates. 0022 indexes violation_events: built with a plain CREATE INDEX, it queued a lock
    behind a running insert's transaction, and every insert after it waited for the whole build
    (here, until the lock timeout). Built concurrently, they go on."""
    import threading

    import sqlalchemy as sa
    from alembic import command

    from iotdefender.store.database import alembic_config, long_statements
    from iotdefender.store.schema import violation_events
    from tests.integration.test_verification_retention import event

    url = postgres.create_database(f"mig{time.time_ns()}")
    engine = create_engine(url)
    command.upgrade(alembic_config(engine), "0021")
    running = engine.connect()  # a node of the previous release, in the middle of a transaction
    running.execute(violation_events.insert().values(event("v-running", "in-alarm", 1.0)))
    failed: list[BaseException] = []

    def upgrade() -> None:
        try:
            with long_statements():  # as the service migrates: an index build may take long
                upgrade_to_head(create_engine(url))
        except BaseException as error:  # noqa: BLE001 (reported by the test)
            failed.append(error)

    upgrading = threading.Thread(target=upgrade)
    upgrading.start()
    building = sa.text("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'CREATE INDEX%violation_events%' "
                       "AND wait_event_type = 'Lock'")
    deadline = time.monotonic() + 30
    while True:  # a connection per look: pg_stat_activity is read once per transaction
        with engine.connect() as probe:
            if probe.execute(building).scalar():
                break
        assert time.monotonic() < deadline and upgrading.is_alive(), failed
        time.sleep(0.05)
    with engine.connect() as other:  # another node of the previous release inserts now
        other.execute(sa.text("SET lock_timeout = '3s'"))
        other.execute(violation_events.insert().values(event("v-during", "in-alarm", 2.0)))
        other.commit()
    running.commit()
    running.close()
    upgrading.join(60)
    assert not upgrading.is_alive() and failed == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
        invalid = conn.execute(sa.text("SELECT count(*) FROM pg_index WHERE NOT indisvalid")).scalar()
        names = {row[0] for row in conn.execute(sa.text(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'violation_events'"))}
    engine.dispose()
    assert invalid == 0 and {"ix_violation_events_profile_time", "ix_violation_events_behavior_time"} <= names


def test_an_index_build_cut_short_is_built_again(postgres):
    """A node killed during a concurrent build leaves the index invalid (PostgreSQL keeps it, unused
    and maintained): the next upgrade drops it and builds it again instead of keeping it."""
    import sqlalchemy as sa
    from alembic import command

    from iotdefender.store.database import alembic_config
    from iotdefender.store.schema import violation_events
    from tests.integration.test_verification_retention import event

    url = postgres.create_database(f"mig{time.time_ns()}")
    engine = create_engine(url)
    command.upgrade(alembic_config(engine), "0021")
    with engine.begin() as conn:
        conn.execute(violation_events.insert(), [event("v", "in-alarm", 1.0), event("v", "in-alarm", 1.0)])
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        with pytest.raises(sa.exc.IntegrityError):  # a failed concurrent build: left behind, invalid
            conn.execute(sa.text("CREATE UNIQUE INDEX CONCURRENTLY ix_violation_events_profile_time "
                                 "ON violation_events (profile_name, event_time)"))
    invalid = sa.text("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
    with engine.connect() as conn:
        assert conn.execute(invalid).scalar() == 1
    upgrade_to_head(engine)
    with engine.connect() as conn:
        assert conn.execute(invalid).scalar() == 0
        unique = conn.execute(sa.text("SELECT indisunique FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                      "WHERE c.relname = 'ix_violation_events_profile_time'")).scalar()
    engine.dispose()
    assert unique is False  # the migration's own index, not the leftover


@pytest.mark.parametrize(("before", "index"), [("0020", "ix_things_partition"),
                                               ("0021", "ix_violation_events_profile_time"),
                                               ("0022", "ix_metric_segments_series_id")])
def test_an_upgrade_cut_short_during_an_index_build_runs_again(postgres, before, index):
    """A concurrent build commits what its migration did before it (a column, a table) without the
    revision; cut short (cancelled here, as a node killed or a failover would), the next start runs
    the migration again: it must find what was committed and build the index, not fail on it."""
    import threading

    import sqlalchemy as sa
    from alembic import command

    from iotdefender.store.database import alembic_config, long_statements

    url = postgres.create_database(f"mig{time.time_ns()}")
    engine = create_engine(url)
    command.upgrade(alembic_config(engine), before)
    # A build waits for the transactions holding a snapshot: one (on a table no migration locks)
    # keeps it waiting until it is cancelled.
    old_snapshot = engine.connect().execution_options(isolation_level="REPEATABLE READ")
    old_snapshot.execute(sa.text("SELECT count(*) FROM security_profiles"))
    failed: list[BaseException] = []

    def upgrade() -> None:
        try:
            with long_statements():
                upgrade_to_head(create_engine(url))
        except Exception as error:  # noqa: BLE001 (what the test expects)
            failed.append(error)

    upgrading = threading.Thread(target=upgrade)
    upgrading.start()
    deadline = time.monotonic() + 30
    while True:
        with engine.connect() as probe:
            cancelled = probe.execute(sa.text(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query ILIKE :pattern"),
                {"pattern": f"CREATE INDEX CONCURRENTLY%{index}%"}).scalars().all()
        if cancelled:
            break
        assert time.monotonic() < deadline and upgrading.is_alive(), failed
        time.sleep(0.05)
    upgrading.join(30)
    old_snapshot.rollback()
    old_snapshot.close()
    assert len(failed) == 1 and "cancel" in str(failed[0]).lower()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == before
    with long_statements():
        upgrade_to_head(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
        assert conn.execute(sa.text("SELECT count(*) FROM pg_index WHERE NOT indisvalid")).scalar() == 0
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert differences == []
