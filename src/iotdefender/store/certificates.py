"""SQL for device certificates (controlplane/certificates.py) and the lists the broker enforces
(brokers/certificate_gate.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.pagination import keyset
from iotdefender.store.rows import rows_among
from iotdefender.store import thing_principals as attachments
from iotdefender.store.schema import certificates, thing_principals

ACTIVE = "ACTIVE"
#: A deleted certificate's row: hidden from the API, still refused by the broker.
DELETED = "DELETED"


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


def details(conn: Connection, certificate_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{certificate id: {common_name, not_after}} of those of ``certificate_ids`` (a page's)."""
    rows = rows_among(conn, sa.select(certificates.c.certificate_id, certificates.c.common_name,
                                      certificates.c.not_after), certificates.c.certificate_id, certificate_ids)
    return {key: {"common_name": name, "not_after": not_after} for key, name, not_after in rows}


def of_thing(conn: Connection, thing_name: str) -> list[dict[str, Any]]:
    """The registered certificates a device of that name may connect with: attached to the thing
    (AttachThingPrincipal), or naming it as their common name (under ``--mqtt-auth cert``), newest
    first; deleted ones left out."""
    attached = sa.select(thing_principals.c.certificate_id).where(thing_principals.c.thing_name == thing_name)
    rows = conn.execute(sa.select(certificates.c.certificate_id, certificates.c.status, certificates.c.not_after,
                                  certificates.c.creation_date)
                        .where(sa.or_(certificates.c.common_name == thing_name,
                                      certificates.c.certificate_id.in_(attached)),
                               certificates.c.status != DELETED)
                        .order_by(certificates.c.creation_date.desc()))
    return [dict(row) for row in rows.mappings()]


class Standing(NamedTuple):
    """What the broker enforces of some certificates (``standing``)."""

    #: {certificate id: common name ("" if none)} of every certificate that may not connect (any
    #: status but ACTIVE, deleted ones included unless read with ``deleted_refused`` False).
    refused: dict[str, str]
    #: The ids of those registered ACTIVE (only when read ``with_active``).
    active: set[str]
    #: {certificate id: (common name, the things it is attached to, sorted)} of those attached to any.
    attached: dict[str, tuple[str, tuple[str, ...]]]


def standing(conn: Connection, among: Sequence[str] | None = None, with_active: bool = True,
             modified_since: float | None = None, deleted_refused: bool = True) -> Standing:
    """What the broker enforces, of every certificate or of those of ``among``, in two reads (the
    certificates, then the things attached to them). ``with_active`` False leaves the ACTIVE ones
    unread (their attachments are read all the same): only ``--mqtt-certificates registered`` needs them, and a whole read of a
    large fleet's costs (100 ms at 100,000). ``modified_since``: only those written
    (``last_modified_date``) or attached or detached (``things_modified_date``) at that epoch second
    or after. ``deleted_refused`` False: a deleted certificate is in neither list, as if never
    registered (under ``--mqtt-certificates registered`` that refuses it as AWS IoT would an
    unknown one; otherwise, any certificate the CA signed connects, so a deleted one must stay on
    the refused list)."""
    query = sa.select(certificates.c.certificate_id, certificates.c.common_name, certificates.c.status)
    if not with_active:
        query = query.where(certificates.c.status != ACTIVE)
    if modified_since is not None:
        query = query.where(sa.or_(certificates.c.last_modified_date >= modified_since,
                                   certificates.c.things_modified_date >= modified_since))
    if among is None:
        rows: list[Any] = list(conn.execute(query))
    else:
        rows = rows_among(conn, query, certificates.c.certificate_id, among)
    refused = {certificate_id: common_name or "" for certificate_id, common_name, status in rows
               if status != ACTIVE and (deleted_refused or status != DELETED)}
    active = {certificate_id for certificate_id, _, status in rows if status == ACTIVE}
    # A period's read (``modified_since``) asks for the attachments of the certificates it found.
    read = among if among is not None else None if modified_since is None else [row[0] for row in rows]
    return Standing(refused, active, attachments.things_of(conn, read))
