"""Console sessions the server can end: logout revokes, a saved cookie no longer works.

The session cookie is signed but stateless, so by itself it stays valid until it expires, even
after logout. Each login therefore gets a random session id that the cookie carries and this
registry lists; logout (or expiry) removes it, and a cookie whose id is not listed is treated as
no session. The registry lives in memory: restarting the service logs every operator out,
which errs on the safe side.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable


class SessionRegistry:
    """Live console session ids and when each expires."""

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age_s = max_age_s
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def start(self) -> str:
        session_id = secrets.token_urlsafe(24)
        now = self._clock()
        with self._lock:
            # Forget expired sessions here, so the registry is bounded by logins per max age.
            for stale in [s for s, until in self._expiry.items() if until <= now]:
                del self._expiry[stale]
            self._expiry[session_id] = now + self._max_age_s
        return session_id

    def is_live(self, session_id: object) -> bool:
        if not isinstance(session_id, str):
            return False
        with self._lock:
            until = self._expiry.get(session_id)
        return until is not None and until > self._clock()

    def end(self, session_id: object) -> None:
        if isinstance(session_id, str):
            with self._lock:
                self._expiry.pop(session_id, None)
