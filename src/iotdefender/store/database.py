"""Database engines: SQLite (WAL) embedded by default, PostgreSQL with ``--database-url``.

Schema changes only ever happen through Alembic migrations (``upgrade_to_head``), on both
databases, so a user's existing data directory is carried forward by every release.
"""

from __future__ import annotations

import datetime
import functools
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    import psycopg
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: This release's last migration (tests/unit/test_migration_rules.py checks it is Alembic's head):
#: a database already there starts without Alembic (``upgrade_to_head``).
HEAD_REVISION = "0030"

log = structlog.get_logger("iotdefender")


def normalize_url(url: str) -> str:
    """``postgresql://`` (what users type) means psycopg 3, the driver we ship."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'iotdefender.db').resolve()}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL: readers never block the writer. synchronous=FULL: a transaction the API reported as
    # committed survives kill -9 and power loss. busy_timeout: concurrent writers wait instead
    # of failing with "database is locked". foreign_keys: SQLite leaves them off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


# JSON columns are on the hot path (datapoints, events): orjson is several times faster than the
# stdlib encoder SQLAlchemy uses by default.
_JSON = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


def create_engine(url: str, *, idle_in_transaction_s: float | None = None,
                  round_trip_timeout_s: float | None = None) -> Engine:
    """An engine for ``url``; on PostgreSQL each session ends a transaction its client leaves idle
    for ``idle_in_transaction_s`` (default ``IDLE_IN_TRANSACTION_S``; see ``_server_limits``), and
    a round trip that gets no answer for ``round_trip_timeout_s`` fails its connection (default
    ``ROUND_TRIP_TIMEOUT_S``; see ``BoundedConnection``)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        # A fixed pool: opening SQLite connections (and their PRAGMAs) per request showed up in
        # profiles as pool churn; callers bound their own concurrency (the API uses 8 threads).
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False}, pool_size=16, max_overflow=0, pool_timeout=60,
            **_JSON
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; emit it ourselves. Write
        # transactions (``writing``) take the write lock up front with BEGIN IMMEDIATE, so a
        # read-modify-write (version checks, quotas) never fails upgrading its lock; reads use a
        # deferred BEGIN, a WAL snapshot that neither blocks nor waits for writers.
        @sa.event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _begin(connection):  # type: ignore[no-untyped-def]
            immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    # connect_timeout: an unreachable server fails a batch (ServiceUnavailable) in seconds,
    # instead of holding the writer for the operating system's TCP timeout. The TCP settings do
    # the same for a connection already open when the path to the server starts dropping packets
    # (a firewall rule, a dead route): without them a query, or the pool's pre-ping, waited for
    # the kernel's retransmissions (~15 min), and an operator's trial saw a node's transactions and
    # its /healthz hang for the whole of a 40 s cut.
    # A connection's start is a round trip too: a server that accepts TCP connections and never
    # answers their startup (frozen) holds one for connect_timeout, so a bound shorter than 5 s
    # shortens it as well (libpq's minimum is 2 s); a batch whose pre-ping was stuck then fails
    # within two bounds, not one bound and 5 s.
    bound = ROUND_TRIP_TIMEOUT_S if round_trip_timeout_s is None else round_trip_timeout_s
    connect_timeout = 5 if bound <= 0 else max(2, min(5, math.ceil(bound)))
    engine = sa.create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True,
                              connect_args={"connect_timeout": connect_timeout, **_TCP_LIMITS}, **_JSON)
    sa.event.listen(engine, "do_connect", functools.partial(_connect_bounded, bound))
    limits = _server_limits(IDLE_IN_TRANSACTION_S if idle_in_transaction_s is None else idle_in_transaction_s)
    sa.event.listen(engine, "connect", functools.partial(_set_on_connect, limits))
    return engine


#: How long one round trip to PostgreSQL (a statement and its result, a COPY block, a COMMIT) may
#: go unanswered before its connection is given up (``BoundedConnection``); ``serve
#: --database-timeout``. Every statement of the service's own transactions takes milliseconds
#: (history compaction and retention work in bounded chunks); the long ones (backtests' and ML
#: training's reads of a whole period, migrations) run under ``long_statements``.
ROUND_TRIP_TIMEOUT_S = 10.0

_unbounded: ContextVar[bool] = ContextVar("iotdefender_long_statements", default=False)


@contextmanager
def long_statements() -> Iterator[None]:
    """Round trips made by this thread (or task) inside the block are not bounded by
    ``ROUND_TRIP_TIMEOUT_S``: for work whose single statements may legitimately take longer (a
    read of a whole period or of every alarm state, a migration's index build).
    Such work then waits for a frozen server as it did before; the TCP limits still end it when
    the server's machine stops acknowledging."""
    token = _unbounded.set(True)
    try:
        yield
    finally:
        _unbounded.reset(token)


@functools.lru_cache(maxsize=None)
def _bounded_class(bound: float | None) -> type[psycopg.Connection[Any]]:
    """``BoundedConnection`` with ``bound`` (None: unbounded), defined on first use: SQLite-only
    processes never import psycopg."""
    import psycopg
    from psycopg import errors

    class BoundedConnection(psycopg.Connection):  # type: ignore[type-arg]
        """A psycopg connection whose round trips end after ``round_trip_timeout`` seconds
        without an answer: the connection is closed and ``psycopg.OperationalError`` raised,
        which the callers already treat as an outage (store/availability.py).

        Why: a PostgreSQL that stops answering without closing its connections (its processes
        stopped, a disk that hangs) leaves the kernel acknowledging every packet, so neither the
        TCP keepalives nor ``tcp_user_timeout`` fire, psycopg has no query timeout of its own,
        and ``cancel()`` needs the server to answer. Each statement, COPY block and COMMIT is
        one call to ``wait``, the only place psycopg blocks on the socket; psycopg's own
        ``timeout`` there (``_WaitTimeout``) bounds it. Both are psycopg's internals, which is
        one reason it is pinned exactly (pyproject.toml); test_database_sessions.py fails if they
        change. Closing the socket is what a lost
        connection does anyway: the server, when it runs again, reads end-of-file after what it
        had received and ends the session (an unfinished transaction rolls back; a COMMIT it had
        received commits: the caller treats that commit as unconfirmed, pipeline/detection.py).
        """

        round_trip_timeout = bound

        def wait(self, gen, interval=0.1, timeout=None):  # type: ignore[no-untyped-def]
            limit = self.round_trip_timeout
            if timeout is not None or limit is None or _unbounded.get():
                return super().wait(gen, interval=interval, timeout=timeout)
            try:
                return super().wait(gen, interval=interval, timeout=limit)
            except errors._WaitTimeout:
                self.pgconn.finish()  # the server's state is unknown: this session is over
                raise psycopg.OperationalError(
                    f"no answer from PostgreSQL within {limit:g} s (--database-timeout); connection closed"
                ) from None

    return BoundedConnection


def _connect_bounded(bound: float, _dialect, _record, cargs, cparams):  # type: ignore[no-untyped-def]
    return _bounded_class(bound if bound > 0 else None).connect(*cargs, **cparams)


#: libpq's TCP options (PostgreSQL's "Connection Strings"): data sent and not acknowledged for
#: ``tcp_user_timeout`` ms fails the connection; an idle one is probed after 5 s, every 2 s, 3 times.
#: A query that runs long sends nothing meanwhile and is not cut by either.
_TCP_LIMITS = {"tcp_user_timeout": 10_000, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
               "keepalives_count": 3}


#: How long a transaction may stay idle before the server ends its session (``_server_limits``).
IDLE_IN_TRANSACTION_S = 30.0


def _server_limits(idle_in_transaction_s: float) -> str:
    """The statement that sets ``_TCP_LIMITS`` on the server's side of a connection too, and a bound
    on a transaction left open by a client that went silent.

    The client's own limits end its side; without these the server keeps the session, its
    transaction and their locks until its kernel gives up on the peer (~2 h of keepalive by
    default): a detect node cut off by dropped packets kept the fence rows of its partitions
    locked, and the nodes taking them over waited for those locks (a trial moved 58 of 64
    partitions within a 40 s cut). The keepalives end a session whose client is gone about 11 s
    after its last packet; ``idle_in_transaction_session_timeout`` covers what they cannot see, a
    client behind a proxy or a pooler (PgBouncer) that stays up. Every transaction here is a few
    statements issued back to back (none waits on anything but its own statements; large reads
    decode their rows once the transaction has ended, store/history.py ``Fetched``), so 30 s idle
    inside one means its client is gone. Set per session rather than as startup ``options``:
    PgBouncer refuses unknown startup parameters by default. All five are user-settable, and the
    TCP ones are ignored on Unix-domain sockets."""
    settings = {"tcp_keepalives_idle": _TCP_LIMITS["keepalives_idle"],
                "tcp_keepalives_interval": _TCP_LIMITS["keepalives_interval"],
                "tcp_keepalives_count": _TCP_LIMITS["keepalives_count"],
                "tcp_user_timeout": _TCP_LIMITS["tcp_user_timeout"],
                "idle_in_transaction_session_timeout": round(idle_in_transaction_s * 1000)}
    return "SELECT " + ", ".join(f"set_config('{name}', '{value}', false)" for name, value in settings.items())


def _set_on_connect(limits: str, dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True  # a setting made outside a transaction lasts the session
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(limits)
            # With the process id, when the session started: what names this session and no later
            # one that reuses its process id (``end_session``).
            cursor.execute("SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
            row = cursor.fetchone()
            record.info["backend_start"] = row[0] if row else None
    finally:
        dbapi_connection.autocommit = autocommit


def probe_engine(engine: Engine) -> Engine:
    """An engine for asking whether the database answers, in about 2 s when the network fails or
    the server stops answering: a new connection per probe (an open pooled one may sit on a path
    that drops packets), a 2 s connect timeout, 2 s for the query's packets and for its answer.
    (No server-side ``statement_timeout`` startup option: PgBouncer refuses unknown startup
    parameters by default.) SQLite: the engine itself."""
    if engine.dialect.name != "postgresql":
        return engine
    probing = sa.create_engine(engine.url, poolclass=sa.pool.NullPool,
                               connect_args={"connect_timeout": 2, **_TCP_LIMITS, "tcp_user_timeout": 2_000})
    sa.event.listen(probing, "do_connect", functools.partial(_connect_bounded, 2.0))  # a server that stops answering
    return probing


#: A PostgreSQL session: its server process id and when it started (None if it could not be read).
Session = tuple[int, datetime.datetime | None]


def session_of(conn: Connection) -> Session | None:
    """``conn``'s session (its backend pid, read locally, and its start, read when it connected),
    for ``end_session`` should its connection be lost mid-COMMIT; None on SQLite."""
    if conn.dialect.name != "postgresql":
        return None
    pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
    return pid, conn.connection.info.get("backend_start")


#: How long ``end_session`` waits for the session it ended to be gone.
END_SESSION_WAIT_MS = 500


def end_session(conn: Connection, session: Session) -> bool:
    """End ``session`` (``session_of`` a connection that was lost) and return whether it is gone.

    A COMMIT whose answer was lost may still be ahead of its session: a server that was frozen
    (``BoundedConnection`` gave the connection up) reads it from its socket and commits when it
    runs again, possibly after a new session asked whether it had. Once the session has ended its
    transaction is settled for good: committed or rolled back. Only a session of this database
    and user, started when that session did: a later session that reuses the process id (another
    node's, say) is not the lost one, and is left alone (PgBouncer hands out its own process ids:
    one that names nothing is gone). ``pg_terminate_backend``'s wait needs PostgreSQL 14."""
    pid, started = session
    return bool(conn.execute(sa.text(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = :pid"
        " AND datname = current_database() AND usename = current_user"
        " AND (CAST(:started AS timestamptz) IS NULL OR backend_start = CAST(:started AS timestamptz)))"
        " THEN pg_terminate_backend(:pid, :wait) ELSE true END"),
        {"pid": pid, "started": started, "wait": END_SESSION_WAIT_MS}).scalar())


_WRITE_OPTION = "iotdefender_write"


@functools.lru_cache(maxsize=None)
def _writer(engine: Engine) -> Engine:
    return engine.execution_options(**{_WRITE_OPTION: True})


def writing(engine: Engine) -> AbstractContextManager[Connection]:
    """A write transaction (commits on success, rolls back on error); see ``create_engine``."""
    return _writer(engine).begin()


def write_connection(engine: Engine) -> Connection:
    """A connection for write transactions whose caller must tell a failed commit from a failure
    before it (``conn.begin()`` then ``commit()``): ``writing`` raises the same way for both."""
    return _writer(engine).connect()


def in_batches(engine: Engine, step: Callable[[Connection], int]) -> int:
    """Run ``step`` in one short write transaction after another until it does nothing (returns 0).

    Retention deletes work this way so that no transaction holds the single writer for long;
    returns the total of what the steps did.
    """
    total = 0
    while True:
        with writing(engine) as conn:
            done = step(conn)
        total += done
        if done == 0:
            return total


# alembic is imported where it is used: only the process that migrates needs it, not the detection
# worker (~0.1 s of each of its starts; bench/service_start.py).
def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def revision_unknown_here(engine: Engine, config: Config) -> str | None:
    """The database's revision if this release does not know it (a later release migrated it),
    else None (at or behind this release's head, or empty)."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.script.revision import ResolutionError
    from alembic.util.exc import CommandError

    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    scripts = ScriptDirectory.from_config(config)
    for revision in current:
        try:
            scripts.get_revision(revision)
        except (ResolutionError, CommandError):
            return revision
    return None


def at_head(engine: Engine) -> bool:
    """Is the database at this release's head already? Then a start needs nothing of Alembic, whose
    imports (mako's templates among them) and script directory cost a restart ~0.3 CPU-seconds.
    Anything else (a new database, one behind, one a later release migrated, or a question that
    failed) takes Alembic's path, which migrates or says why not."""
    try:
        with engine.connect() as conn:
            current = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):  # no such table yet, or unreachable
        return False
    return current == [HEAD_REVISION]


def upgrade_to_head(engine: Engine) -> None:
    """Migrate to this release's head. A database a later release has migrated is left as it is:
    in a rolling upgrade (docs/cluster.md) a node of the previous release may start after the
    first node of the next one migrated (a crash, a restart, stopping the upgrade), and the next
    release's migrations only add (tests/unit/test_migration_rules.py), so it runs on that
    schema; before, it refused to start ("Can't locate revision")."""
    if at_head(engine):
        return
    from alembic import command

    config = alembic_config(engine)
    ahead = revision_unknown_here(engine, config)
    if ahead is not None:
        log.warning("database_ahead", revision=ahead,
                    detail="a later release migrated this database; its migrations only add, so this release runs on it")
        return
    command.upgrade(config, "head")
