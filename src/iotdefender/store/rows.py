"""Row helpers: named, versioned tables (read by name, compare-and-set on ``version``) and the
driver-level bulk insert of the hot paths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection


#: Names ``name_among`` takes in one statement (one parameter on either database): a bounded
#: statement, well within ``--database-timeout``, at any fleet size.
NAMES_PER_STATEMENT = 50_000


def names_in_chunks(names: Sequence[str]) -> list[Sequence[str]]:
    """``names`` cut into the lists that ``name_among`` takes in one statement."""
    return [names[start:start + NAMES_PER_STATEMENT] for start in range(0, len(names), NAMES_PER_STATEMENT)]


def rows_among(conn: Connection, query: sa.Select[Any], column: sa.ColumnElement[str],
               names: Sequence[str]) -> list[Any]:
    """The rows of ``query`` whose ``column`` is one of ``names``, a statement per ``names_in_chunks``."""
    rows: list[Any] = []
    for chunk in names_in_chunks(names):
        rows += conn.execute(query.where(name_among(conn, column, chunk))).all()
    return rows


def name_among(conn: Connection, column: sa.ColumnElement[str], names: Sequence[str]) -> sa.ColumnElement[bool]:
    """``column IN names``. On PostgreSQL one array parameter (``= ANY(%s::VARCHAR[])``), not a
    parameter per name: a list of 500 rendered by SQLAlchemy and parsed again by psycopg at each
    statement (beyond psycopg's 4 KB statement cache) cost a takeover of a partition's share of
    10M devices over 2 s for its 156,000 names (``registry_facts``). On SQLite one JSON array
    parameter read by ``json_each`` (built in since SQLite 3.38, and in Python's builds before):
    a parameter per name needed statements of at most 500 (SQLite's limit was 999 before 3.32),
    0.56 s for 100,000 names (half registered, a quarter in a group) against 0.36 s now (medians of 9, alternating)."""
    if conn.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(names), type_=ARRAY(sa.String)))
    listed = sa.func.json_each(sa.bindparam(None, orjson.dumps(list(names)).decode(), type_=sa.String))
    return column.in_(sa.select(listed.table_valued("value").c.value))


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


def insert_many(conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """One plain INSERT run by the driver's executemany, for hot paths.

    SQLAlchemy's per-row parameter processing (type coercion, JSON serialisation through the
    dialect) cost tens of µs a row in bench/pipeline.py; callers pass ready values instead — JSON
    columns already encoded with orjson — and the statement is the same on SQLite and PostgreSQL.
    """
    if not rows:
        return
    conn.exec_driver_sql(_insert_sql(conn, table, columns), list(rows))


def _insert_sql(conn: Connection, table: sa.Table, columns: Sequence[str]) -> str:
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([marker] * len(columns))})"


def upsert_many(conn: Connection, table: sa.Table, key: str, columns: Sequence[str],
                rows: Sequence[Sequence[Any]]) -> None:
    """``insert_many`` that replaces the other columns of a row whose ``key`` exists: the same
    ``ON CONFLICT (key) DO UPDATE SET c = excluded.c`` on SQLite (3.24+) and PostgreSQL, for the
    same reason (SQLAlchemy's per-row processing of an upsert's parameters, on every report)."""
    if not rows:
        return
    updated = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    conn.exec_driver_sql(f"{_insert_sql(conn, table, columns)} ON CONFLICT ({key}) DO UPDATE SET {updated}", list(rows))


def json_text(value: Any) -> str | None:
    """A JSON column's value as insert_many wants it (NULL stays NULL)."""
    return None if value is None else orjson.dumps(value).decode()


def upsert(conn: Connection, table: sa.Table) -> Any:
    """An INSERT that can take ``on_conflict_do_update``/``do_nothing``: both dialects have one,
    with the same interface, but SQLAlchemy's generic ``insert`` has neither."""
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)
