"""Pinging a pooled PostgreSQL connection before use only when it has been idle for a while.

SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one more round trip to the server per
transaction, which the cluster's detect node pays on every one (bench/README.md, "Where a report's
time goes": the writer's transaction is five round trips at low load, the ping one of them). What
the ping guards against is a connection that died while it sat in the pool: the server restarted,
or ended the session (an administrator's ``pg_terminate_backend``, an idle timeout, a failover).
Such a death happens while the connection is idle, so a connection checked in moments ago is very
likely alive; one idle for longer than ``idle_s`` is pinged as before (SQLAlchemy's "Disconnect
Handling - Pessimistic", with a custom ``checkout`` event: a ``DisconnectionError`` makes the pool
replace the connection and check out again; here every connection pooled before it too).

The rare connection that died within ``idle_s`` of its last use fails its first statement
instead ("Disconnect Handling - Optimistic"): SQLAlchemy flags the error ``connection_invalidated``
and invalidates every pooled connection older than it, ``is_unavailable`` counts it an outage, and
each caller already handles that (a detect node's batch is handed over again, ingest answers
``ServiceUnavailable``, the API 503, which AWS SDKs retry) exactly as for a transaction that was in
progress when the server went away — which a pre-ping never protected either.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

#: How long a pooled connection may sit idle and still be used without a ping.
PING_AFTER_IDLE_S = 1.0

_LAST_USED = "iotdefender_last_used"


def ping_when_idle(engine: Engine, idle_s: float = PING_AFTER_IDLE_S) -> None:
    """Make ``engine``'s pool ping a connection at checkout only if it was idle ``idle_s`` or more
    (use instead of ``pool_pre_ping``); a new connection is not pinged."""
    dialect = engine.dialect

    def used(dbapi_connection: Any, record: Any) -> None:  # on connect and on checkin
        record.info[_LAST_USED] = time.monotonic()

    def check(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        last = record.info.get(_LAST_USED)
        if last is not None and time.monotonic() - last < idle_s:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                # Most often the server restarted or failed over: every connection pooled before
                # now is replaced on its next checkout, the recently used ones too (not pinged).
                raise sa.exc.InvalidatePoolError(f"a pooled connection was closed while idle: {error}") from error
            raise

    sa.event.listen(engine, "connect", used)
    sa.event.listen(engine, "checkin", used)
    sa.event.listen(engine, "checkout", check)
