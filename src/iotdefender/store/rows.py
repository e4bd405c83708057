"""What the named, versioned tables share: read by name, compare-and-set update on ``version``."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def get_by_name(conn: Connection, table: sa.Table, name: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(table).where(table.c.name == name)).mappings().first()
    return dict(row) if row else None


def update_versioned(conn: Connection, table: sa.Table, name: str, expected_version: int, **values: Any) -> bool:
    """Compare-and-set on ``version``: False when another writer changed the row since it was read."""
    result = conn.execute(
        table.update()
        .where(table.c.name == name, table.c.version == expected_version)
        .values(version=expected_version + 1, **values)
    )
    return result.rowcount == 1
