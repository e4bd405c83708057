"""How late the service's event loop runs a timer: a stalled loop reads, stores and answers nothing.

Every report, answer, broker event and API request of a process passes through its event loop. An
outside-in run of the README's ML recipe saw a service answer no report for 1.7-2.1 s (a library
load holding the GIL) and 4-8 s in another run, with nothing in the log: the only trace was the
devices' own timing. ``watch`` sleeps ``interval_s`` at a time and measures how much later than
asked each wake-up comes; every lateness goes to ``iotdefender_event_loop_lag_seconds``, and one of
``warn_after_s`` or more is logged (``event_loop_stalled``, with the lag, at most a few lines per 10
s: log_limits.py). The cost is one timer a tenth of a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import Histogram

from iotdefender.log_limits import LimitedLog

log = structlog.get_logger("iotdefender.loop")

LOOP_LAG = Histogram(
    "iotdefender_event_loop_lag_seconds",
    "How much later than asked the event loop woke a timer of 0.1 s: the time it could not read, store or "
    "answer anything (a lock, a long computation or a library load holding the GIL, a stalled machine)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
STALLED_LOG = LimitedLog(log, "event_loop_stalled", "iotdefender_event_loop_lag_seconds", level="warning")

INTERVAL_S = 0.1
WARN_AFTER_S = 1.0


async def watch(interval_s: float = INTERVAL_S, warn_after_s: float = WARN_AFTER_S,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Measure the loop's lateness forever (a background task of the service)."""
    while True:
        asked = clock()
        await sleep(interval_s)
        lag = max(0.0, clock() - asked - interval_s)
        LOOP_LAG.observe(lag)
        if lag >= warn_after_s:
            STALLED_LOG("stalled", lag_s=round(lag, 3),
                        detail="the event loop ran nothing else meanwhile: no report read or answered")
