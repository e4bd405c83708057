"""Small pieces of English shared by the console and the command-line tools."""

from __future__ import annotations

from typing import Any


def count_of(n: Any, noun: str) -> str:
    """``1 device``, ``2 devices``: counts in sentences read as English ("1 devices" did not)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
