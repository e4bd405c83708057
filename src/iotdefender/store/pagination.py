"""Keyset pagination with opaque ``nextToken`` values.

Tokens encode the last key returned, not an offset, so a page never skips or repeats items when
others are created or deleted between calls (boto3 paginators resend every original parameter
plus ``nextToken``). Tokens are base64url JSON; a forged or corrupt one is an
InvalidRequestException, never a 500.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.api.errors import invalid_request

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 25
_SCAN_BATCH = 500


def encode_token(after: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"after": after})).decode().rstrip("=")


def decode_token(token: str | None) -> Any:
    """The key to continue after, or None for the first page."""
    if token is None:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        document = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        return document["after"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError, orjson.JSONDecodeError):
        raise invalid_request("The nextToken is invalid") from None


def page_size(max_results: int | None) -> int:
    return max_results if max_results is not None else DEFAULT_PAGE_SIZE


def scan_rows(conn: Connection, query: sa.Select, key: sa.ColumnElement, after: Any) -> Iterator[Any]:
    """All rows of ``query`` ordered by ``key`` after ``after``, fetched in batches."""
    while True:
        stmt = query.order_by(key).limit(_SCAN_BATCH)
        if after is not None:
            stmt = stmt.where(key > after)
        rows = conn.execute(stmt).all()
        yield from rows
        if len(rows) < _SCAN_BATCH:
            return
        after = getattr(rows[-1], key.key)


def take_page(items: Iterable[T], limit: int, key_of: Callable[[T], Any]) -> tuple[list[T], str | None]:
    """First ``limit`` items and the token for the rest (None when nothing is left)."""
    page: list[T] = []
    iterator = iter(items)
    for item in iterator:
        if len(page) == limit:
            return page, encode_token(key_of(page[-1]))
        page.append(item)
    return page, None
