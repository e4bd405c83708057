"""Whether the database is reachable: readiness for ``/healthz`` and one log line per change.

A PostgreSQL outage used to show as thousands of tracebacks (one per failed batch and per API
call) while ``/healthz`` kept answering 200. Every component that meets a database error asks
``is_unavailable`` whether it is an outage (connection refused or lost, server shutting down,
SQLite unable to open or write its file) rather than a defect or a bad input; outages go to one
``DatabaseHealth``, which logs ``database_unavailable`` when the state flips to down and
``database_available`` (with the outage's length) when it flips back, and which ``/healthz``
consults — probing the database itself, at most once per ``probe_interval`` — so that a load
balancer or an orchestrator stops sending traffic while the service cannot store anything.
"""

from __future__ import annotations

import functools
import sqlite3
import sys
import threading
import time
from collections.abc import Callable

import sqlalchemy as sa
import sqlalchemy.exc
import structlog
from prometheus_client import Gauge
from sqlalchemy.engine import Engine

from iotdefender.store.database import probe_engine

log = structlog.get_logger("iotdefender.database")

AVAILABLE = Gauge("iotdefender_database_available", "1 while the database is reachable, 0 during an outage")


_BASE_OUTAGE_TYPES: tuple[type[BaseException], ...] = (sqlite3.OperationalError, sqlalchemy.exc.OperationalError,
                                                        sqlalchemy.exc.InterfaceError)


@functools.cache
def _with_psycopg() -> tuple[type[BaseException], ...]:
    import psycopg

    return (*_BASE_OUTAGE_TYPES, psycopg.OperationalError, psycopg.InterfaceError)


def _driver_outage_types() -> tuple[type[BaseException], ...]:
    """The drivers' own connection-level errors: the hot path writes through driver cursors
    (store/rows.py), whose exceptions SQLAlchemy does not wrap. psycopg's only once it is imported
    (a PostgreSQL engine imports it): no psycopg error can exist before, and a SQLite service's
    processes start ~0.1 s sooner without it."""
    return _with_psycopg() if "psycopg" in sys.modules else _BASE_OUTAGE_TYPES


class StoreUnavailable(RuntimeError):
    """The database could not be used for this batch: nothing of it was stored; retry later."""

    @classmethod
    def caused_by(cls, outage: BaseException) -> StoreUnavailable:
        """One naming the outage, with it as its cause (a new one per batch that fails of it)."""
        error = cls(f"{type(outage).__name__}: {outage}")
        error.__cause__ = outage
        return error


def is_unavailable(error: BaseException) -> bool:
    """True for errors that say the database cannot be used right now (retry later), as opposed
    to an error caused by what was being written (which retrying the same data repeats)."""
    if isinstance(error, StoreUnavailable):
        return True
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, _driver_outage_types())


def log_unless_outage(logger: structlog.stdlib.BoundLogger, event: str, error: BaseException) -> None:
    """For background loops: a defect is logged with its traceback; an outage is not (it is
    reported once, by ``DatabaseHealth``), so a stopped database does not flood the log."""
    if not is_unavailable(error):
        logger.error(event, exc_info=error)


class DatabaseHealth:
    """The database's state as last seen by this process; thread-safe."""

    def __init__(self, probe: Callable[[], None], probe_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe
        self._probe_interval = probe_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._back_at: float | None = None  # when the database was last seen available again
        self._probed_at: float | None = None
        AVAILABLE.set(1)

    @classmethod
    def of(cls, engine: Engine, probe_interval: float = 1.0) -> DatabaseHealth:
        probing = probe_engine(engine)

        def probe() -> None:
            with probing.connect() as conn:
                conn.execute(sa.text("SELECT 1"))

        return cls(probe, probe_interval)

    @property
    def available(self) -> bool:
        return self._down_since is None

    def now(self) -> float:
        """This health's clock: when an operation begins, for ``failed``."""
        return self._clock()

    def failed(self, error: BaseException | str, began: float | None = None) -> None:
        """An outage was observed (logged only if the database was up until now). ``began``: when
        the failed operation began (``now``). One that began before the database was seen back
        failed of the outage that is over: a batch in flight at the recovery, its failure handled
        just after a probe succeeded, was logged as a second outage of a second or so (once in a
        CI run, PostgreSQL stopped under load). A new outage is told by the operations after."""
        with self._lock:
            if self._down_since is not None:
                return
            if began is not None and self._back_at is not None and began < self._back_at:
                return
            self._down_since = self._clock()
        AVAILABLE.set(0)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        log.error("database_unavailable", error=first_line)

    def succeeded(self) -> None:
        """A database operation worked (logged only if the database was down until now)."""
        with self._lock:
            if self._down_since is None:
                return
            self._back_at = self._clock()
            down_for = self._back_at - self._down_since
            self._down_since = None
        AVAILABLE.set(1)
        log.warning("database_available", outage_seconds=round(down_for, 1))

    def check(self) -> bool:
        """Readiness: probe the database (at most once per interval) and return whether it is up.
        Blocking: call it from a worker thread."""
        now = self._clock()
        if self._probed_at is not None and now - self._probed_at < self._probe_interval:
            return self.available
        self._probed_at = now
        try:
            self._probe()
        except Exception as error:
            if not is_unavailable(error):
                raise
            self.failed(error)
            return False
        self.succeeded()
        return True
