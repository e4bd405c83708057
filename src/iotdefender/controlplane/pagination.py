"""Keyset pagination with opaque ``nextToken`` values.

Tokens encode the last key returned, not an offset, so a page never skips or repeats items when
others are created or deleted between calls (boto3 paginators resend every original parameter
plus ``nextToken``). Tokens are base64url JSON; a forged or corrupt one is an
InvalidRequestException, never a 500. A token belongs to the listing that gave it (``scope_of``):
one of another listing's (another profile's violations, another thing type's things) was taken
as a key to continue after, and gave that listing's items from that name on.

The token is the wire form of a key, so it lives with the operations; storage only scans rows in
key order (``store.pagination.scan_rows``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import orjson

from iotdefender.contract.errors import invalid_request

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 25


#: What a listing is not: the page size may change between its pages (the AWS CLI's
#: ``--page-size``), and the console lists "the last 7 days" with a range that moves with the
#: clock between pages (a key in time still continues it).
_NOT_THE_LISTING = frozenset({"nextToken", "maxResults", "startTime", "endTime"})


def scope_of(params: Mapping[str, Any], **options: Any) -> str:
    """The listing ``params`` ask for (every parameter but those of ``_NOT_THE_LISTING``; ``options``:
    a caller's own, such as an order), as a short digest its tokens carry."""
    listing = {key: value for key, value in params.items() if key not in _NOT_THE_LISTING} | options
    digest = hashlib.sha256(orjson.dumps(listing, option=orjson.OPT_SORT_KEYS, default=str)).digest()
    return base64.urlsafe_b64encode(digest[:9]).decode()


def encode_token(after: Any, scope: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"after": after, "for": scope})).decode().rstrip("=")


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


def decode_token(token: str | None, scope: str, shape: KeyShape = str) -> Any:
    """The key to continue after (of the shape the operation encodes), or None for the first page;
    ``scope``: the listing asked for now (``scope_of``), which must be the token's."""
    if token is None:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        document = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        after, issued_for = document["after"], document.get("for")
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError, orjson.JSONDecodeError,
            AttributeError):
        raise invalid_request("The nextToken is invalid") from None
    if not _is_key(after, shape):
        raise invalid_request("The nextToken is invalid")
    if issued_for != scope:
        raise invalid_request("The nextToken is invalid: it was given for a request with other parameters")
    return after


def page_size(max_results: int | None) -> int:
    return max_results if max_results is not None else DEFAULT_PAGE_SIZE


def take_page(items: Iterable[T], limit: int, key_of: Callable[[T], Any], scope: str) -> tuple[list[T], str | None]:
    """First ``limit`` items and the token for the rest of the listing ``scope`` (None when nothing is left)."""
    page: list[T] = []
    iterator = iter(items)
    for item in iterator:
        if len(page) == limit:
            return page, encode_token(key_of(page[-1]), scope)
        page.append(item)
    return page, None
