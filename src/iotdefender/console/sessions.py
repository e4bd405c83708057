"""Console sessions the server can end: logout revokes, a saved cookie no longer works.

The session cookie is signed but stateless, so by itself it stays valid until it expires, even
after logout. Each login therefore gets a random session id that the cookie carries and the
database lists (store/console_sessions.py); logout (or expiry) removes it, and a cookie whose id
is not listed is treated as no session. The list is in the database, not in the process: in
cluster mode every api node signs cookies with the same key (derived from the shared access keys)
and knows every session, so a load balancer needs no sticky sessions and a logout on one node
ends the session on all of them; a restart no longer logs every operator out.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import anyio.to_thread
from sqlalchemy.engine import Engine

from iotdefender.store import console_sessions


class SessionRegistry:
    """Live console session ids and when each expires, shared through the database."""

    def __init__(self, engine: Engine, max_age_s: float, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._max_age_s = max_age_s
        self._clock = clock

    async def start(self) -> str:
        session_id = secrets.token_urlsafe(24)
        now = self._clock()

        def record() -> None:
            with self._engine.begin() as conn:
                console_sessions.start(conn, session_id, now + self._max_age_s, now)

        await anyio.to_thread.run_sync(record)
        return session_id

    async def is_live(self, session_id: object) -> bool:
        if not isinstance(session_id, str):
            return False

        def look() -> bool:
            with self._engine.connect() as conn:
                return console_sessions.is_live(conn, session_id, self._clock())

        return await anyio.to_thread.run_sync(look)

    async def end(self, session_id: object) -> None:
        if not isinstance(session_id, str):
            return

        def remove() -> None:
            with self._engine.begin() as conn:
                console_sessions.end(conn, session_id)

        await anyio.to_thread.run_sync(remove)
