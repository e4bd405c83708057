"""A long-lived service run by one node of the cluster at a time, the others standing by.

Some inputs may be read by one node only: NATS system events and ``/connz`` counters of an external
broker would be counted once per node that reads them. Each node that could read them runs
``run_while_held``: the node that takes a PostgreSQL advisory lock (``store/advisory.hold``, a
session lock on a connection of its own) starts the service and checks the connection every
``check_s``; the others retry every ``check_s``. PostgreSQL frees the lock when the holder's
connection ends (the node is killed, or cut off from the database), and a standby node takes over
within ``check_s``. The holder that finds its connection broken stops the service; until it does
(at most ``check_s``), two nodes may read at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from sqlalchemy.engine import Engine

from iotdefender.store.advisory import hold, let_go, still_held
from iotdefender.store.availability import log_unless_outage

log = structlog.get_logger("iotdefender.cluster")


async def run_while_held(engine: Engine, key: int, name: str, start: Callable[[], Awaitable[None]],
                         stop: Callable[[], Awaitable[None]], check_s: float = 2.0, node: str = "") -> None:
    """Forever: take the lock, run the service while it is held, stop it when it is not. ``node``
    names this node in the log lines (an aggregated log must tell which node took over)."""
    while True:
        try:
            conn = await asyncio.to_thread(hold, engine, key)
        except Exception as error:  # the database is down: retry
            log_unless_outage(log, f"singleton_lock_failed_{name}", error)
            conn = None
        if conn is None:
            await asyncio.sleep(check_s)
            continue
        try:
            await start()
            log.info("singleton_started", service=name, node=node)
            while await asyncio.to_thread(still_held, conn):
                await asyncio.sleep(check_s)
            log.warning("singleton_lock_lost", service=name, node=node)
        except Exception as error:
            log.warning("singleton_failed", service=name, node=node, error=f"{type(error).__name__}: {error}")
        finally:
            try:
                await stop()
            finally:
                await asyncio.to_thread(let_go, conn, key)
        await asyncio.sleep(check_s)
