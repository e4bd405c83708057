"""Rows of a query in key order, fetched in batches: the storage side of keyset pagination.

The control plane turns the last key of a page into an opaque ``nextToken``
(``controlplane.pagination``); storage only knows keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_SCAN_BATCH = 500


def scan_rows(conn: Connection, query: sa.Select[Any], key: sa.Column[Any], after: Any) -> Iterator[Any]:
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


def keyset(query: sa.Select[Any], time_: sa.Column[Any], id_: sa.Column[Any], after: tuple[Any, Any] | None,
           descending: bool = False) -> sa.Select[Any]:
    """``query`` ordered by (time, id), continuing after the key ``after`` in that order: the
    listings by time (violations, events, mitigation tasks), whose times are not unique."""
    if after is not None:
        ts, key = after
        query = query.where(sa.or_(time_ < ts, sa.and_(time_ == ts, id_ < key)) if descending else
                            sa.or_(time_ > ts, sa.and_(time_ == ts, id_ > key)))
    return query.order_by(*((time_.desc(), id_.desc()) if descending else (time_, id_)))
