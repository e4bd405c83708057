"""Log lines that a flood would multiply (a rejected report, a refused connection), limited.

A device publishing 2,000 reports a second, or a fleet meeting a full ingest queue, got one log
line per rejection: the log grew fastest exactly when the service was overloaded. A
``LimitedLog`` writes, per key (the rejection code, the refusal reason), the first ``burst`` lines
of each ``interval_s`` in full, counts the rest, and writes one ``<event>_summary`` line per
interval in which some were left out, with the counts per key::

    {"event": "report_rejected_summary", "interval_s": 10.0, "counts": {"Throttled": 1999},
     "not_logged": {"Throttled": 1994}, "exact_totals": "iotdefender_report_rejections_total"}

The Prometheus counters stay exact: they are counted by the callers, not here. The summary of an
interval is written when the next line comes after it, or by a timer at its end (so a flood that
stops is still summed up), or at exit. Neither structlog nor the stdlib's logging has a limiter
(logging's filters see one record at a time, with no summary), hence this small class.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

BURST = 5  # lines in full per key and interval
INTERVAL_S = 10.0


class LimitedLog:
    """``log(key, **fields)``: ``logger.<level>(event, **fields)``, at most ``burst`` times per key
    and interval; ``metric`` names where the exact totals are (in the summary); thread-safe (the broker's events and the ingest loop run in different threads)."""

    def __init__(self, logger: Any, event: str, metric: str | None, level: str = "info", burst: int = BURST,
                 interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 timer: Callable[[float, Callable[[], None]], Any] | None = None) -> None:
        self._logger, self._event, self._metric = logger, event, metric
        self._level = level
        self._burst, self._interval = burst, interval_s
        self._clock = clock
        self._timer = timer if timer is not None else _daemon_timer
        self._lock = threading.Lock()
        self._started: float | None = None  # the interval under way, if any
        self._counts: Counter[str] = Counter()
        self._summary_due = False  # a line of this interval was left out: a timer sums it up
        atexit.register(self.flush)

    def __call__(self, key: str, **fields: Any) -> None:
        with self._lock:
            now = self._clock()
            summary, started = None, self._started
            if started is None or now - started >= self._interval:
                summary = self._close()
                self._started = started = now
            self._counts[key] += 1
            full = self._counts[key] <= self._burst
            if not full and not self._summary_due:
                self._summary_due = True
                self._timer(max(0.0, started + self._interval - now), lambda: self._timed_flush(started))
        if summary is not None:
            self._write_summary(summary)
        if full:
            getattr(self._logger, self._level)(self._event, **fields)

    def flush(self) -> None:
        """Sum up the interval under way now (at exit, in tests)."""
        with self._lock:
            summary = self._close()
        if summary is not None:
            self._write_summary(summary)

    def _timed_flush(self, started: float) -> None:
        with self._lock:
            summary = self._close() if self._started == started else None  # else: already closed
        if summary is not None:
            self._write_summary(summary)

    def _close(self) -> dict[str, Any] | None:
        """End the interval (under the lock); its summary if some lines were left out."""
        counts, self._counts, self._started = self._counts, Counter(), None
        self._summary_due = False
        not_logged = {key: n - self._burst for key, n in sorted(counts.items()) if n > self._burst}
        if not not_logged:
            return None
        summary: dict[str, Any] = {"interval_s": self._interval, "counts": dict(sorted(counts.items())),
                                   "not_logged": not_logged}
        if self._metric is not None:
            summary["exact_totals"] = self._metric
        return summary

    def _write_summary(self, summary: dict[str, Any]) -> None:
        getattr(self._logger, self._level)(f"{self._event}_summary", **summary)


def _daemon_timer(delay: float, action: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(delay, action)
    timer.daemon = True
    timer.start()
    return timer
