"""SQL for resource tags, keyed by resource ARN."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.schema import tags


def list_for(conn: Connection, arn: str) -> list[dict[str, str]]:
    rows = conn.execute(sa.select(tags.c.key, tags.c.value).where(tags.c.resource_arn == arn).order_by(tags.c.key))
    return [{"Key": k, "Value": v} for k, v in rows]


def put(conn: Connection, arn: str, pairs: Iterable[Mapping[str, str]]) -> None:
    """Add or overwrite tags (TagResource semantics)."""
    for pair in pairs:
        conn.execute(tags.delete().where(tags.c.resource_arn == arn, tags.c.key == pair["Key"]))
        conn.execute(tags.insert().values(resource_arn=arn, key=pair["Key"], value=pair.get("Value", "")))


def remove(conn: Connection, arn: str, keys: Iterable[str]) -> None:
    conn.execute(tags.delete().where(tags.c.resource_arn == arn, tags.c.key.in_(list(keys))))


def replace(conn: Connection, arn: str, pairs: Iterable[Mapping[str, str]]) -> None:
    conn.execute(tags.delete().where(tags.c.resource_arn == arn))
    put(conn, arn, pairs)
