"""Which driver errors are outages (``is_unavailable``), psycopg's included once it is imported."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import psycopg
import sqlalchemy.exc

from iotdefender.store.availability import is_unavailable


def test_the_drivers_connection_errors_are_outages_and_others_are_not():
    assert is_unavailable(psycopg.OperationalError("connection refused"))
    assert is_unavailable(psycopg.InterfaceError("the connection is closed"))
    assert is_unavailable(sqlite3.OperationalError("unable to open database file"))
    assert is_unavailable(sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("gone")))
    assert not is_unavailable(psycopg.errors.UniqueViolation("duplicate key"))
    assert not is_unavailable(sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert not is_unavailable(ValueError("bad input"))


def test_a_sqlite_process_imports_neither_psycopg_nor_alembic_to_store():
    """The detection worker of a SQLite service needs neither (each start of it paid ~0.2 s); the
    classification above still holds once psycopg is imported later."""
    probe = ("import sys; import iotdefender.pipeline.worker, iotdefender.store.availability as a;"
             "print(sorted(m for m in ('psycopg', 'alembic') if m in sys.modules));"
             "import psycopg; print(a.is_unavailable(psycopg.OperationalError('x')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "True"]


def test_a_failure_of_an_operation_begun_before_the_recovery_is_no_new_outage():
    """A batch in flight when the database came back fails of the outage that is over: its failure,
    handled after a probe succeeded, is no second outage; one begun after the recovery is."""
    from iotdefender.store.availability import DatabaseHealth

    clock = [100.0]
    health = DatabaseHealth(lambda: None, clock=lambda: clock[0])
    health.failed("connection refused", began=health.now())
    in_flight = health.now()
    clock[0] = 110.0
    assert health.check() and health.available  # probed: back
    clock[0] = 110.2
    health.failed("connection refused", began=in_flight)
    assert health.available
    health.failed("connection refused", began=health.now())  # begun after: a new outage
    assert not health.available
    health.succeeded()
    health.failed("connection refused")  # no time given (a failure met at once): an outage
    assert not health.available
