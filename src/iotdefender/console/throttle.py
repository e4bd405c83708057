"""Login throttling: after too many failed logins from one address or for one access key, wait.

Without it a script could try secrets as fast as the server answers (100 in 0.1 s were measured).
Failures are counted per client address and per access key ID over a sliding window; when either
reaches the limit, logins for it are refused with ``429 Too Many Requests`` and ``Retry-After``
until its oldest failure leaves the window (docs/console.md). A success clears the address's
count; the key's count is kept, so one leaked key cannot be used to reset another's throttle.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

MAX_FAILURES = 10
WINDOW_S = 600.0
MAX_TRACKED = 10_000  # addresses and keys remembered at once; the oldest are forgotten first


class LoginThrottle:
    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, subject: str, now: float) -> deque[float]:
        times = self._failures.get(subject)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[subject]
        return times

    def retry_after(self, subjects: Iterable[str]) -> int | None:
        """Seconds until a login for these subjects may be tried again, or None if it may now."""
        now = self._clock()
        wait = 0.0
        with self._lock:
            for subject in subjects:
                times = self._recent(subject, now)
                if len(times) >= self.max_failures:
                    wait = max(wait, times[-self.max_failures] + self.window_s - now)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def failed(self, subjects: Iterable[str]) -> None:
        now = self._clock()
        with self._lock:
            for subject in subjects:
                times = self._recent(subject, now)
                times.append(now)
                self._failures[subject] = times
            while len(self._failures) > MAX_TRACKED:
                del self._failures[next(iter(self._failures))]

    def succeeded(self, subject: str) -> None:
        with self._lock:
            self._failures.pop(subject, None)
