"""SQL for device certificates (controlplane/certificates.py) and the lists the broker enforces
(brokers/certificate_gate.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.pagination import keyset
from iotdefender.store.schema import certificates

ACTIVE = "ACTIVE"
#: A deleted certificate's row: hidden from the API, still refused by the broker.
DELETED = "DELETED"
_IN_BATCH = 500  # ids in one IN (...) list


def get(conn: Connection, certificate_id: str) -> dict[str, Any] | None:
    """The certificate, unless it was deleted."""
    query = sa.select(certificates).where(certificates.c.certificate_id == certificate_id,
                                          certificates.c.status != DELETED)
    row = conn.execute(query).mappings().first()
    return dict(row) if row else None


def put(conn: Connection, **values: Any) -> None:
    """Insert the certificate, or replace its deleted row (registered again)."""
    stored = conn.execute(certificates.update().where(certificates.c.certificate_id == values["certificate_id"],
                                                      certificates.c.status == DELETED).values(**values))
    if stored.rowcount == 0:
        conn.execute(certificates.insert().values(**values))


def update(conn: Connection, certificate_id: str, **values: Any) -> None:
    conn.execute(certificates.update().where(certificates.c.certificate_id == certificate_id).values(**values))


def page(conn: Connection, after: tuple[float, str] | None, limit: int, ascending: bool) -> list[dict[str, Any]]:
    """Certificates by creation date (then id), after the key ``after``; deleted ones left out."""
    query = sa.select(certificates.c.certificate_id, certificates.c.arn, certificates.c.status,
                      certificates.c.certificate_mode, certificates.c.creation_date
                      ).where(certificates.c.status != DELETED)
    query = keyset(query, certificates.c.creation_date, certificates.c.certificate_id, after, descending=not ascending)
    return [dict(row) for row in conn.execute(query.limit(limit)).mappings()]


def of_common_name(conn: Connection, common_name: str) -> list[dict[str, Any]]:
    """The registered certificates naming ``common_name`` (a thing's, under ``--mqtt-auth cert``),
    newest first; deleted ones left out."""
    rows = conn.execute(sa.select(certificates.c.certificate_id, certificates.c.status, certificates.c.not_after,
                                  certificates.c.creation_date)
                        .where(certificates.c.common_name == common_name, certificates.c.status != DELETED)
                        .order_by(certificates.c.creation_date.desc()))
    return [dict(row) for row in rows.mappings()]


def standing(conn: Connection, among: Sequence[str] | None = None, with_active: bool = True,
             modified_since: float | None = None, deleted_refused: bool = True) -> tuple[dict[str, str], set[str]]:
    """What the broker enforces, in one read: ({certificate id: common name ("" if none)} of every
    certificate that may not connect (any status but ACTIVE, deleted ones included), {ids of those
    registered ACTIVE}), of every certificate or of those of ``among``. ``with_active`` False
    leaves the ACTIVE ones unread: only ``--mqtt-certificates registered`` needs them, and a
    whole read of a large fleet's costs (100 ms at 100,000). ``modified_since``: only those
    written (``last_modified_date``) at that epoch second or after. ``deleted_refused`` False: a
    deleted certificate is in neither list, as if never registered (under ``--mqtt-certificates
    registered`` that refuses it as AWS IoT would an unknown one; otherwise, any certificate the CA
    signed connects, so a deleted one must stay on the refused list)."""
    query = sa.select(certificates.c.certificate_id, certificates.c.common_name, certificates.c.status)
    if not with_active:
        query = query.where(certificates.c.status != ACTIVE)
    if modified_since is not None:
        query = query.where(certificates.c.last_modified_date >= modified_since)
    rows: list[Any] = []
    if among is None:
        rows = list(conn.execute(query))
    else:
        for start in range(0, len(among), _IN_BATCH):
            rows += conn.execute(query.where(certificates.c.certificate_id.in_(among[start:start + _IN_BATCH]))).all()
    refused = {certificate_id: common_name or "" for certificate_id, common_name, status in rows
               if status != ACTIVE and (deleted_refused or status != DELETED)}
    active = {certificate_id for certificate_id, _, status in rows if status == ACTIVE}
    return refused, active
