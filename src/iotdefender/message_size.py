"""Cutting what one NATS message would carry into messages that each fit.

NATS refuses a message over the server's ``max_payload`` (1 MB by default; nats-py raises
``MaxPayloadError`` before sending). What a node sends in one message can grow with the fleet
(a detect node's window values, a transaction's outcomes, a partition's cloud window parts), so
each is cut in halves, in order, until every piece encodes small enough.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def fitting(items: Sequence[T], encode: Callable[[Sequence[T]], bytes], max_bytes: int
            ) -> list[tuple[Sequence[T], bytes]]:
    """``items`` in consecutive runs whose ``encode`` is at most ``max_bytes`` (a single item is
    kept whatever its size), each with its encoding; in the items' order, so cutting the same
    items again gives the same runs."""
    encoded = encode(items)
    if len(items) <= 1 or len(encoded) <= max_bytes:
        return [(items, encoded)]
    half = len(items) // 2
    return fitting(items[:half], encode, max_bytes) + fitting(items[half:], encode, max_bytes)


def payload_limit(max_payload: int, cap: int | None = None) -> int:
    """The bytes a message's payload may encode to on a server whose messages carry at most
    ``max_payload`` (its INFO), leaving 4 KB for the subject and headers; at most ``cap``."""
    limit = max_payload - 4096 if cap is None else min(cap, max_payload - 4096)
    return max(1024, limit)
