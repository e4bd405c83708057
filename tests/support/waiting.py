"""Waiting in a test's event loop for something another task or process brings about."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(predicate: Callable[[], object], timeout: float, what: str, poll_s: float = 0.05) -> float:
    """Seconds until ``predicate()`` is true; ``TimeoutError(what)`` after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(what)
        await asyncio.sleep(poll_s)
    return time.monotonic() - start
