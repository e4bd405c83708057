"""The Alembic migrations build exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head
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
