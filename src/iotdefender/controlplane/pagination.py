"""Keyset pagination with opaque ``nextToken`` values.

Tokens encode the last key returned, not an offset, so a page never skips or repeats items when
others are created or deleted between calls (boto3 paginators resend every original parameter
plus ``nextToken``). Tokens are base64url JSON; a forged or corrupt one is an
InvalidRequestException, never a 500.

The token is the wire form of a key, so it lives with the operations; storage only scans rows in
key order (``store.pagination.scan_rows``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import orjson

from iotdefender.contract.errors import invalid_request

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 25


def encode_token(after: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"after": after})).decode().rstrip("=")


_INT64 = range(-(2**63), 2**63)
# What a key is made of: a type (str, int, float) or a tuple of them for a composite key, which
# travels as a JSON list. Names are str, ids int, timestamps float.
KeyShape = type | tuple[type, ...]


def _is_key(value: Any, shape: KeyShape) -> bool:
    """Whether ``value`` is a key of this shape: a forged token's key reaches SQL and comparisons.

    A key of another type would be a database error or a TypeError instead of a 400; a NUL in a
    name cannot even be bound by PostgreSQL; an integer beyond 64 bits overflows its column.
    """
    if isinstance(shape, tuple):
        return (isinstance(value, list) and len(value) == len(shape)
                and all(_is_key(v, s) for v, s in zip(value, shape)))
    if isinstance(value, bool):
        return False
    if shape is str:
        return isinstance(value, str) and "\x00" not in value
    if shape is int:
        return isinstance(value, int) and value in _INT64
    if shape is float:  # orjson never decodes NaN or infinities
        return isinstance(value, float) or (isinstance(value, int) and value in _INT64)
    return False


def decode_token(token: str | None, shape: KeyShape = str) -> Any:
    """The key to continue after (of the shape the operation encodes), or None for the first page."""
    if token is None:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        document = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        after = document["after"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError, orjson.JSONDecodeError):
        raise invalid_request("The nextToken is invalid") from None
    if not _is_key(after, shape):
        raise invalid_request("The nextToken is invalid")
    return after


def page_size(max_results: int | None) -> int:
    return max_results if max_results is not None else DEFAULT_PAGE_SIZE


def take_page(items: Iterable[T], limit: int, key_of: Callable[[T], Any]) -> tuple[list[T], str | None]:
    """First ``limit`` items and the token for the rest (None when nothing is left)."""
    page: list[T] = []
    iterator = iter(items)
    for item in iterator:
        if len(page) == limit:
            return page, encode_token(key_of(page[-1]))
        page.append(item)
    return page, None
