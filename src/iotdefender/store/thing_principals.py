"""SQL for certificates attached to things (controlplane/thing_principals.py) and what the
broker's certificate gate reads of them (brokers/certificate_gate.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.rows import rows_among
from iotdefender.store.schema import certificates, thing_principals


def of_certificate(conn: Connection, certificate_id: str) -> dict[str, bool]:
    """{thing name: attached exclusively} of the things the certificate is attached to."""
    rows = conn.execute(sa.select(thing_principals.c.thing_name, thing_principals.c.exclusive)
                        .where(thing_principals.c.certificate_id == certificate_id))
    return {name: bool(exclusive) for name, exclusive in rows}


def has_certificates(conn: Connection, thing_name: str) -> bool:
    query = sa.select(thing_principals.c.certificate_id).where(thing_principals.c.thing_name == thing_name).limit(1)
    return conn.execute(query).first() is not None


def attach(conn: Connection, thing_name: str, certificate_id: str, exclusive: bool, now: float) -> None:
    """Attach (or attach again, with this exclusivity) and stamp the certificate for the gate."""
    key = (thing_principals.c.thing_name == thing_name) & (thing_principals.c.certificate_id == certificate_id)
    if conn.execute(thing_principals.update().where(key).values(exclusive=exclusive)).rowcount == 0:
        conn.execute(thing_principals.insert().values(thing_name=thing_name, certificate_id=certificate_id,
                                                      exclusive=exclusive, attached_date=now))
    _stamp(conn, certificate_id, now)


def detach(conn: Connection, thing_name: str, certificate_id: str, now: float) -> bool:
    """Whether it was attached."""
    key = (thing_principals.c.thing_name == thing_name) & (thing_principals.c.certificate_id == certificate_id)
    if conn.execute(thing_principals.delete().where(key)).rowcount == 0:
        return False
    _stamp(conn, certificate_id, now)
    return True


def _stamp(conn: Connection, certificate_id: str, now: float) -> None:
    conn.execute(certificates.update().where(certificates.c.certificate_id == certificate_id)
                 .values(things_modified_date=now))


def principals_page(conn: Connection, thing_name: str, after: str | None, limit: int,
                    exclusive: bool | None = None) -> list[dict[str, Any]]:
    """The certificates attached to the thing ({certificate_id, arn, exclusive}), by id after ``after``."""
    query = (sa.select(thing_principals.c.certificate_id, certificates.c.arn, thing_principals.c.exclusive)
             .join(certificates, certificates.c.certificate_id == thing_principals.c.certificate_id)
             .where(thing_principals.c.thing_name == thing_name))
    return _page(conn, query, thing_principals.c.certificate_id, after, limit, exclusive)


def things_page(conn: Connection, certificate_id: str, after: str | None, limit: int,
                exclusive: bool | None = None) -> list[dict[str, Any]]:
    """The things the certificate is attached to ({thing_name, exclusive}), by name after ``after``."""
    query = (sa.select(thing_principals.c.thing_name, thing_principals.c.exclusive)
             .where(thing_principals.c.certificate_id == certificate_id))
    return _page(conn, query, thing_principals.c.thing_name, after, limit, exclusive)


def _page(conn: Connection, query: sa.Select[Any], key: sa.Column[Any], after: str | None, limit: int,
          exclusive: bool | None) -> list[dict[str, Any]]:
    if after is not None:
        query = query.where(key > after)
    if exclusive is not None:
        query = query.where(thing_principals.c.exclusive == exclusive)
    return [dict(row) for row in conn.execute(query.order_by(key).limit(limit)).mappings()]


def things_of(conn: Connection, certificate_ids: Sequence[str] | None) -> dict[str, tuple[str, tuple[str, ...]]]:
    """{certificate id: (its common name ("" if none), the names of the things it is attached to,
    sorted)} of the certificates attached to any, among ``certificate_ids`` (None: every one)."""
    query = (sa.select(thing_principals.c.certificate_id, certificates.c.common_name, thing_principals.c.thing_name)
             .join(certificates, certificates.c.certificate_id == thing_principals.c.certificate_id))
    if certificate_ids is None:
        rows: list[Any] = list(conn.execute(query))
    else:
        rows = rows_among(conn, query, thing_principals.c.certificate_id, certificate_ids)
    names: dict[str, str] = {}
    attached: dict[str, list[str]] = {}
    for certificate_id, common_name, thing_name in rows:
        names[certificate_id] = common_name or ""
        attached.setdefault(certificate_id, []).append(thing_name)
    return {key: (names[key], tuple(sorted(things))) for key, things in attached.items()}
