"""Wakes the invalidation sweep ahead of its period when the control plane changed.

A detach, a deleted profile, a behavior removed, a thing leaving a group: each ends the alarms it no
longer covers with ``alarm-invalidated``. The sweep finds them (``DetectionService.sweep``), but it
runs every ``invalidation-period / 20`` (a minute at the default time scale), so those violations
stayed active for up to a minute after the API had answered. The change wakes the sweep instead.

Not the request path: the API's listener only sets a flag on the event loop; the sweep runs as
ever, in its loop, off the loop's thread. Its cost is the active alarms (in memory), not the fleet,
and when none is due it writes nothing. A burst of changes (a script registering things, each call
a change) is one sweep: the sweep starts ``SETTLE_S`` after the first change, taking every change
made meanwhile, and changes made while it runs make one more after it.
"""

from __future__ import annotations

import asyncio

from iotdefender.cancellation import wait_event

SETTLE_S = 0.1  # at most ten woken sweeps a second, each 0.1 s after the change it is for


class SweepWake:
    """Set from any thread (the API calls its change listeners from its worker threads); waited on
    by the one sweep loop, which binds it to its event loop when it starts."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self) -> None:
        """Called by the sweep loop, on its event loop; a wake before that is moot (the loop's
        first sweep is still to come)."""
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def __call__(self) -> None:
        loop, event = self._loop, self._event
        if loop is None or event is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(event.set)

    async def wait(self, timeout: float, settle: float = SETTLE_S) -> bool:
        """Until woken (and ``settle`` seconds more, for the rest of a burst) or ``timeout``
        seconds passed; True when woken."""
        assert self._event is not None, "bind() first"
        if not await wait_event(self._event, timeout):
            return False
        await asyncio.sleep(settle)
        self._event.clear()
        return True
