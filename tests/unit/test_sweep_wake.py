"""The invalidation sweep woken by a control-plane change rather than waiting for its period."""

from __future__ import annotations

import asyncio
import threading
import time

from iotdefender.pipeline.sweep_wake import SweepWake
from iotdefender.service import sweep_loop


def test_a_burst_of_changes_starts_one_sweep_at_once_and_changes_during_it_one_more():
    """The period here is a minute (the default time scale's): without the wake the first sweep
    would come a minute after the change."""
    swept: list[float] = []
    started = threading.Event()

    def sweep(now: float) -> None:
        swept.append(now)
        started.set()
        time.sleep(0.2)  # a slow sweep: the changes made meanwhile are coalesced

    async def scenario() -> list[float]:
        wake = SweepWake()
        wake()  # before the loop runs: moot, and harmless
        loop = asyncio.create_task(sweep_loop(sweep, 2 * 86400, wake=wake))
        await asyncio.sleep(0.05)
        changed = time.time()
        burst = lambda: [wake() for _ in range(3)]  # noqa: E731 - as the API calls it: from a worker thread
        await asyncio.to_thread(burst)
        await asyncio.to_thread(started.wait, 5)
        await asyncio.to_thread(burst)
        await asyncio.sleep(0.6)
        loop.cancel()
        return [at - changed for at in swept]

    delays = asyncio.run(scenario())
    assert len(delays) == 2  # one for the first burst, then one for the three changes made during it
    assert 0 <= delays[0] < 0.5 and delays[1] < 0.8
