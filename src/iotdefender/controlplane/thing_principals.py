"""Certificates attached to things: AttachThingPrincipal, DetachThingPrincipal, ListThingPrincipals(V2),
ListPrincipalThings(V2).

Why they are here: every provisioning script for AWS IoT registers a certificate and attaches it to
its thing, and the attachment is how AWS IoT knows which thing a connection is (its thing policy
variables, ``iot:Connection.Thing.IsAttached``). Under ``--mqtt-auth cert`` the broker takes it the
same way (brokers/certificate_gate.py): a device whose certificate is attached to things connects
only with one of their names as its client id, whatever the certificate's common name; one attached
to none keeps the common-name rule, but not for a thing that has certificates attached (AWS's
``iot:Connection.Thing.IsAttached``: that thing is theirs).

As on AWS IoT (docs/api-behaviour.md, "Certificates attached to things"):

- The principal is a certificate's ARN (``certificateArn`` of RegisterCertificate); the certificate
  must be registered here. Amazon Cognito identities have no meaning without Cognito: refused.
- ``EXCLUSIVE_THING`` attaches a certificate to that thing only: refused while it is attached to
  another, and any other thing is refused while it holds. ``NON_EXCLUSIVE_THING`` is the default.
  Attaching the same pair again succeeds (with the type given).
- A thing with certificates attached cannot be deleted, nor a certificate attached to things
  (``InvalidRequestException`` "Cannot delete. Thing ... is still attached to one or more
  principals", ``DeleteConflictException``).
- Detaching a certificate that is not attached succeeds, as AWS's asynchronous detach does.
- Not AWS: a certificate is attached to at most ``MAX_THINGS_PER_CERTIFICATE`` things.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iotdefender.contract.errors import invalid_request
from iotdefender.controlplane.certificates import certificate_id_of_arn, require_certificate
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.controlplane.pagination import decode_token, encode_token, page_size, scope_of
from iotdefender.controlplane.things import require_thing
from iotdefender.english import some_of
from iotdefender.store import thing_principals

operation = OperationTable()

EXCLUSIVE = "EXCLUSIVE_THING"
NON_EXCLUSIVE = "NON_EXCLUSIVE_THING"
#: Things one certificate may be attached to. AWS documents no bound; the broker holds each
#: certificate's things as one entry, checked at every CONNECT made with it and sent whole in one
#: control message (within its 256 KB packets at names of 128 characters).
MAX_THINGS_PER_CERTIFICATE = 1000


def _certificate(ctx: ServiceContext, conn: Any, principal: str) -> dict[str, Any]:
    certificate_id = certificate_id_of_arn(principal)
    if certificate_id is None or not principal.startswith(ctx.arn("cert/")):
        raise invalid_request(f"The principal {principal[:200]!r} is not the ARN of a certificate of this account and "
                              f"region ({ctx.arn('cert/')}<certificateId>); only certificates are principals here")
    return require_certificate(conn, certificate_id)


def _type_filter(params: Params) -> bool | None:
    kind = params.get("thingPrincipalType")
    return None if kind is None else kind == EXCLUSIVE


def _type_of(exclusive: bool) -> str:
    return EXCLUSIVE if exclusive else NON_EXCLUSIVE


@operation("AttachThingPrincipal", changes_monitoring=False)
def attach_thing_principal(ctx: ServiceContext, params: Params) -> Params:
    thing_name, exclusive = params["thingName"], params.get("thingPrincipalType") == EXCLUSIVE
    with ctx.writing() as conn:
        require_thing(conn, thing_name)
        certificate = _certificate(ctx, conn, params["principal"])
        attached = thing_principals.of_certificate(conn, certificate["certificate_id"])
        others = sorted(name for name in attached if name != thing_name)
        held = [name for name in others if attached[name]]
        if held:
            raise invalid_request(f"Certificate {certificate['certificate_id']} is attached exclusively to thing "
                                  f"{held[0]}: detach it first")
        if exclusive and others:
            raise invalid_request(f"Certificate {certificate['certificate_id']} cannot be attached exclusively to "
                                  f"{thing_name}: it is attached to {some_of(others)}")
        if thing_name not in attached and len(attached) >= MAX_THINGS_PER_CERTIFICATE:
            raise invalid_request(f"Certificate {certificate['certificate_id']} is attached to "
                                  f"{MAX_THINGS_PER_CERTIFICATE} things, the most one may be attached to here")
        if attached.get(thing_name) != exclusive:
            thing_principals.attach(conn, thing_name, certificate["certificate_id"], exclusive, ctx.now())
    return {}


@operation("DetachThingPrincipal", changes_monitoring=False)
def detach_thing_principal(ctx: ServiceContext, params: Params) -> Params:
    with ctx.writing() as conn:
        require_thing(conn, params["thingName"])
        certificate = _certificate(ctx, conn, params["principal"])
        thing_principals.detach(conn, params["thingName"], certificate["certificate_id"], ctx.now())
    return {}


def _page(ctx: ServiceContext, params: Params, key: str,
          read: Callable[[Any, str | None, int, bool | None], list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], str | None]:
    """A page of one of the listings: ``read(conn, after, limit, exclusive)`` checks what it lists
    exists and gives its rows in ``key`` order."""
    scope, limit = scope_of(params), page_size(params.get("maxResults"))
    with ctx.engine.connect() as conn:
        rows = read(conn, decode_token(params.get("nextToken"), scope), limit + 1, _type_filter(params))
    token = encode_token(rows[limit - 1][key], scope) if len(rows) > limit else None
    return rows[:limit], token


def _principals(ctx: ServiceContext, params: Params) -> tuple[list[dict[str, Any]], str | None]:
    def read(conn: Any, after: str | None, limit: int, exclusive: bool | None) -> list[dict[str, Any]]:
        require_thing(conn, params["thingName"])
        return thing_principals.principals_page(conn, params["thingName"], after, limit, exclusive)

    return _page(ctx, params, "certificate_id", read)


@operation("ListThingPrincipals")
def list_thing_principals(ctx: ServiceContext, params: Params) -> Params:
    rows, token = _principals(ctx, params)
    return {"principals": [row["arn"] for row in rows], "nextToken": token}


@operation("ListThingPrincipalsV2")
def list_thing_principals_v2(ctx: ServiceContext, params: Params) -> Params:
    rows, token = _principals(ctx, params)
    return {"thingPrincipalObjects": [{"principal": row["arn"], "thingPrincipalType": _type_of(row["exclusive"])}
                                      for row in rows], "nextToken": token}


def _things(ctx: ServiceContext, params: Params) -> tuple[list[dict[str, Any]], str | None]:
    def read(conn: Any, after: str | None, limit: int, exclusive: bool | None) -> list[dict[str, Any]]:
        certificate = _certificate(ctx, conn, params["principal"])
        return thing_principals.things_page(conn, certificate["certificate_id"], after, limit, exclusive)

    return _page(ctx, params, "thing_name", read)


@operation("ListPrincipalThings")
def list_principal_things(ctx: ServiceContext, params: Params) -> Params:
    rows, token = _things(ctx, params)
    return {"things": [row["thing_name"] for row in rows], "nextToken": token}


@operation("ListPrincipalThingsV2")
def list_principal_things_v2(ctx: ServiceContext, params: Params) -> Params:
    rows, token = _things(ctx, params)
    return {"principalThingObjects": [{"thingName": row["thing_name"], "thingPrincipalType": _type_of(row["exclusive"])}
                                      for row in rows], "nextToken": token}
