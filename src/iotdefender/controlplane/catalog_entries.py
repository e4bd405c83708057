"""What custom metrics and dimensions share: idempotent creation, quotas, in-use deletion guard."""

from __future__ import annotations

from typing import Any

from iotdefender.contract.errors import already_exists, invalid_request, limit_exceeded, not_found
from iotdefender.controlplane import behavior_rules
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import Params
from iotdefender.store import catalog, profiles, tags
from iotdefender.controlplane.pagination import decode_token, page_size, scope_of, take_page

LABEL = {"custom_metric": "Custom metric", "dimension": "Dimension"}
_DIFFERENT = {"metric_type": "a different metric type", "type": "a different type",
              "string_values": "different string values"}
ARN_KIND = {"custom_metric": "custommetric", "dimension": "dimension"}


def require(conn: Any, kind: str, name: str) -> dict[str, Any]:
    row = catalog.get(conn, kind, name)
    if row is None:
        raise not_found(f"{LABEL[kind]} {name} does not exist")
    return row


def create(ctx: ServiceContext, kind: str, name: str, token: str | None, quota: int,
           values: dict[str, Any], tag_list: list[dict[str, str]], defining: tuple[str, ...]) -> dict[str, Any]:
    """Insert the entry, or return the existing one when the same request is repeated.

    The model's clientRequestToken makes creation idempotent: the same name with the same token
    (boto3 reuses the token on retries) returns the original; a different token is a conflict.
    So is the same token asking for something else in the ``defining`` members (a custom
    metric's type, a dimension's filters): returning the original would tell the caller it has
    what it asked for. AWS documents nothing for a token reused so; IoT's own rule for
    CreateThing ("the same thing name but different configuration": ResourceAlreadyExists) is
    followed. The other members (a display name) are not compared: a retry may leave them out.
    """
    with ctx.writing() as conn:
        existing = catalog.get(conn, kind, name)
        if existing is not None:
            if token is not None and existing["client_request_token"] == token:
                differing = [key for key in defining if _compared(existing[key]) != _compared(values[key])]
                if not differing:
                    return existing
                raise already_exists(f"{LABEL[kind]} {name} already exists with "
                                     f"{' and '.join(_DIFFERENT[key] for key in differing)}", name, existing["arn"])
            raise already_exists(f"{LABEL[kind]} {name} already exists", name, existing["arn"])
        if catalog.count(conn, kind) >= quota:
            raise limit_exceeded(f"The account already has {quota} {LABEL[kind].lower()}s, the maximum")
        now = ctx.now()
        row = dict(name=name, arn=ctx.arn(f"{ARN_KIND[kind]}/{name}"), client_request_token=token,
                   creation_date=now, last_modified_date=now, **values)
        catalog.insert(conn, kind, **row)
        tags.replace(conn, row["arn"], tag_list)
    return row


def _compared(value: Any) -> Any:
    """A defining member as a retry is compared on: a dimension's filters in any order are the
    same filters (a script that builds them from a set may send them in another order)."""
    return sorted(value) if isinstance(value, list) else value


def update(ctx: ServiceContext, kind: str, name: str, values: dict[str, Any]) -> dict[str, Any]:
    """Change the mutable members of an entry; returns the updated row."""
    with ctx.writing() as conn:
        row = require(conn, kind, name)
        row.update(values, last_modified_date=ctx.now())
        catalog.update(conn, kind, name, **values, last_modified_date=row["last_modified_date"])
    return row


def delete(ctx: ServiceContext, kind: str, name: str) -> None:
    """Refuse while a security profile uses the entry (AWS: remove it from profiles first)."""
    with ctx.writing() as conn:
        row = catalog.get(conn, kind, name)
        if row is None:
            return  # neither Delete operation has ResourceNotFoundException: deleting nothing succeeds
        for profile in profiles.all_profiles(conn):
            if kind == "custom_metric":
                used = behavior_rules.metric_names_used(
                    profile["behaviors"], profile["additional_metrics_to_retain"] or [],
                    profile["additional_metrics_to_retain_v2"] or [])
            else:
                used = behavior_rules.dimension_names_used(
                    profile["behaviors"], profile["additional_metrics_to_retain_v2"] or [])
            if name in used:
                raise invalid_request(
                    f"{LABEL[kind]} {name} is used by security profile {profile['name']}; "
                    "remove it from every security profile before deleting it"
                )
        catalog.delete(conn, kind, name)
        tags.replace(conn, row["arn"], [])


def list_names(ctx: ServiceContext, kind: str, params: Params) -> tuple[list[str], str | None]:
    scope = scope_of(params, kind=kind)
    with ctx.engine.connect() as conn:
        rows = catalog.scan_names(conn, kind, decode_token(params.get("nextToken"), scope))
        page, token = take_page((r.name for r in rows), page_size(params.get("maxResults")), lambda n: n, scope)
    return page, token
