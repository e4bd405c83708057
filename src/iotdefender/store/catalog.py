"""SQL for the account's named entries: custom metrics and dimensions (the names behaviors may refer
to), and mitigation actions (the names Detect mitigation tasks apply)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.pagination import scan_rows
from iotdefender.store.rows import get_by_name
from iotdefender.store.schema import custom_metrics, dimensions, mitigation_actions

TABLES = {"custom_metric": custom_metrics, "dimension": dimensions, "mitigation_action": mitigation_actions}


def get(conn: Connection, kind: str, name: str) -> dict[str, Any] | None:
    return get_by_name(conn, TABLES[kind], name)


def insert(conn: Connection, kind: str, **values: Any) -> None:
    conn.execute(TABLES[kind].insert().values(**values))


def update(conn: Connection, kind: str, name: str, **values: Any) -> None:
    table = TABLES[kind]
    conn.execute(table.update().where(table.c.name == name).values(**values))


def delete(conn: Connection, kind: str, name: str) -> None:
    table = TABLES[kind]
    conn.execute(table.delete().where(table.c.name == name))


def count(conn: Connection, kind: str) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(TABLES[kind])).scalar_one())


def scan_names(conn: Connection, kind: str, after: str | None) -> Iterator[Any]:
    table = TABLES[kind]
    return scan_rows(conn, sa.select(table.c.name), table.c.name, after)


def custom_metric_types(conn: Connection) -> dict[str, str]:
    return dict(conn.execute(sa.select(custom_metrics.c.name, custom_metrics.c.metric_type)).all())


def dimension_names(conn: Connection) -> set[str]:
    return set(conn.execute(sa.select(dimensions.c.name)).scalars())


def dimension_values(conn: Connection) -> dict[str, list[str]]:
    return dict(conn.execute(sa.select(dimensions.c.name, dimensions.c.string_values)).all())
