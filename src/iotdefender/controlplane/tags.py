"""TagResource, UntagResource, ListTagsForResource for the taggable resources of this service."""

from __future__ import annotations

from typing import Any

from iotdefender.contract.errors import not_found
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.store import catalog, profiles, registry, tags
from iotdefender.controlplane.pagination import decode_token, scope_of
from iotdefender.controlplane.tag_rules import refuse_reserved, refuse_too_many

operation = OperationTable()



def _require_resource(ctx: ServiceContext, conn: Any, arn: str) -> None:
    prefix = ctx.arn("")
    kind, _, name = arn[len(prefix):].partition("/") if arn.startswith(prefix) else ("", "", "")
    exists = {
        "securityprofile": lambda: profiles.get(conn, name) is not None,
        "custommetric": lambda: catalog.get(conn, "custom_metric", name) is not None,
        "dimension": lambda: catalog.get(conn, "dimension", name) is not None,
        "thinggroup": lambda: registry.get_group(conn, name) is not None,
        "mitigationaction": lambda: catalog.get(conn, "mitigation_action", name) is not None,
    }.get(kind)
    if exists is None or not name or not exists():
        raise not_found(f"Resource {arn} does not exist or is not taggable")


@operation("TagResource", changes_monitoring=False)
def tag_resource(ctx: ServiceContext, params: Params) -> Params:
    arn = params["resourceArn"]
    refuse_reserved(tag["Key"] for tag in params["tags"])
    wanted = list({tag["Key"]: tag for tag in params["tags"]}.values())  # a key given twice: its last value
    refuse_too_many(len(wanted))  # before the database: 110,000 tags were written one by one (22 s), then refused
    with ctx.writing() as conn:
        _require_resource(ctx, conn, arn)
        tags.put(conn, arn, wanted)
        refuse_too_many(len(tags.list_for(conn, arn)))
    return {}


@operation("UntagResource", changes_monitoring=False)
def untag_resource(ctx: ServiceContext, params: Params) -> Params:
    arn = params["resourceArn"]
    refuse_reserved(params["tagKeys"])
    with ctx.writing() as conn:
        _require_resource(ctx, conn, arn)
        tags.remove(conn, arn, params["tagKeys"])
    return {}


@operation("ListTagsForResource")
def list_tags_for_resource(ctx: ServiceContext, params: Params) -> Params:
    arn = params["resourceArn"]
    with ctx.engine.connect() as conn:
        _require_resource(ctx, conn, arn)
        if params.get("nextToken") is not None:
            decode_token(params["nextToken"], scope_of(params))  # none is given: every tag is on one page
        return {"tags": tags.list_for(conn, arn)}
