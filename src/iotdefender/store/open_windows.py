"""SQL for the cloud-side windows a graceful stop leaves open (cloud/service.py): kept at the stop,
taken back (read and deleted) at the next start, with the window open then (kept even when idle)."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.rows import upsert
from iotdefender.store.schema import cloud_open_grid, cloud_open_windows


def keep(conn: Connection, parts: Iterable[tuple[int, str, bytes]]) -> int:
    """Store (window, thing, encoded accumulators) rows; one already there for the same window and
    thing is replaced. Returns how many were given."""
    rows = [{"window_index": w, "thing": t, "part": p} for w, t, p in parts]
    if rows:
        stmt = upsert(conn, cloud_open_windows)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[cloud_open_windows.c.window_index, cloud_open_windows.c.thing],
            set_={"part": stmt.excluded.part}), rows)
    return len(rows)


def take(conn: Connection) -> list[tuple[int, str, bytes]]:
    """Every kept row, oldest window first, deleted in the same transaction."""
    rows = [(int(w), t, bytes(p)) for w, t, p in conn.execute(
        sa.select(cloud_open_windows.c.window_index, cloud_open_windows.c.thing, cloud_open_windows.c.part)
        .order_by(cloud_open_windows.c.window_index, cloud_open_windows.c.thing))]
    if rows:
        conn.execute(sa.delete(cloud_open_windows))
    return rows


def keep_open_window(conn: Connection, window: int) -> None:
    """Record the window open at a graceful stop (replacing any recorded before)."""
    conn.execute(sa.delete(cloud_open_grid))
    conn.execute(sa.insert(cloud_open_grid).values(window_index=window))


def take_open_window(conn: Connection) -> int | None:
    """The window open at the last graceful stop (None: the last stop was not graceful, or was
    by a release that did not record it), deleted in the same transaction."""
    found = conn.execute(sa.select(sa.func.max(cloud_open_grid.c.window_index))).scalar()
    conn.execute(sa.delete(cloud_open_grid))
    return None if found is None else int(found)
