"""Stopping background tasks on Python 3.11, whose ``asyncio.wait_for`` can swallow a cancellation.

When a task is cancelled at the moment the operation it awaits through ``asyncio.wait_for``
completes, 3.11's ``wait_for`` returns that operation's result instead of raising
``CancelledError`` (python/cpython#86296, fixed by 3.12's rewrite of ``wait_for``). A loop task
cancelled once then simply goes on: ``task.cancel(); await task`` waits forever. Seen here as a
detect node's ownership loop that kept rebalancing after ``Ownership.stop`` (a 60 s test timeout in
one fresh-clone run); nats-py awaits through ``wait_for`` in most requests, so any loop that calls
NATS can meet it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

#: Seconds between cancellations of a task that has not ended yet.
RECANCEL_S = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object] | None]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again those still running
    every ``RECANCEL_S`` (a cancellation that was swallowed); what they raise is not re-raised."""
    every = [task for task in tasks if task is not None]
    running = set(every)
    while running:
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=RECANCEL_S)
    for task in every:
        if not task.cancelled():
            task.exception()  # retrieved: asyncio would log it as never retrieved otherwise


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """``event.wait()`` for at most ``timeout`` seconds; whether it was set. Through
    ``asyncio.timeout``, which tells its own cancellation from a caller's, instead of ``wait_for``:
    a loop that waits so between rounds and was cancelled as the event was set went on, and
    ``task.cancel(); await task`` never returned (an alert deliverer's loop: a 300 s test timeout
    in a fresh-clone run on a loaded machine; the service's own stop awaits its tasks too)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False
