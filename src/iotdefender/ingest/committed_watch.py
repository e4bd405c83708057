"""Tells a broker node's waiting reports when PostgreSQL shows them committed, one query for all.

A report's outcome comes from its detect node over core NATS (at most once), normally within
milliseconds. When it does not come in time (lost with a NATS server that died, or a resend that
JetStream already held), the broker node looks at ``thing_report_state``: report ids only grow per
thing, so a stored id at or past the report's means it was committed (ingest/cluster_commit.py).
During an election every report in flight is in that state at once — thousands at fleet size — so
they are not polled one query each: this watch polls every ``poll_s`` with one query over every
thing watched, while any is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import anyio.to_thread
import structlog
from sqlalchemy.engine import Engine

from iotdefender.store import metric_values
from iotdefender.store.availability import log_unless_outage

log = structlog.get_logger("iotdefender.cluster")

#: (thing, report id)
Key = tuple[str, int]


def stored_report_ids(engine: Engine) -> Callable[[Iterable[str]], dict[str, int]]:
    """The stored report id of each of the things that has one (the query the watch makes)."""
    def read(things: Iterable[str]) -> dict[str, int]:
        with engine.connect() as conn:
            return {thing: state[0] for thing, state in metric_values.load_report_states(conn, things).items()}
    return read


class CommittedWatch:
    """``watch(key)`` gives a future resolved once the report is seen committed; ``forget`` it after."""

    def __init__(self, read: Callable[[Iterable[str]], dict[str, int]], poll_s: float = 0.2) -> None:
        self._read, self._poll_s = read, poll_s
        self._watched: dict[Key, list[asyncio.Future[None]]] = {}
        self._poller: asyncio.Task[None] | None = None

    def watch(self, key: Key) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watched.setdefault(key, []).append(future)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="committed-watch")
        return future

    def forget(self, key: Key, future: asyncio.Future[None]) -> None:
        futures = self._watched.get(key)
        if futures is not None and future in futures:
            futures.remove(future)
            if not futures:
                del self._watched[key]

    async def _poll(self) -> None:
        """While anything is watched: read the watched things' stored ids, resolve what they reached."""
        while self._watched:
            await asyncio.sleep(self._poll_s)
            things = {thing for thing, _ in self._watched}
            try:
                stored = await anyio.to_thread.run_sync(self._read, things)
            except Exception as error:  # the database is away: the waiters run into their timeout
                log_unless_outage(log, "committed_watch_failed", error)
                continue
            for (thing, report_id), futures in list(self._watched.items()):
                if stored.get(thing, -1) >= report_id:
                    for future in futures:
                        if not future.done():
                            future.set_result(None)
