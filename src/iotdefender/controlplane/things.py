"""Things: CreateThing, DescribeThing, UpdateThing, DeleteThing, ListThings, ListThingGroupsForThing."""

from __future__ import annotations

import uuid
from typing import Any

from iotdefender.contract.errors import already_exists, invalid_request, not_found, version_conflict
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.controlplane.versioning import check_expected_version, merge_attributes
from iotdefender.store import registry, thing_principals
from iotdefender.controlplane.pagination import decode_token, page_size, scope_of, take_page

operation = OperationTable()


def _require_no_thing_type(name: str | None) -> None:
    # Thing types and billing groups are not part of this service: a name given for either can
    # never refer to an existing resource, which AWS answers with ResourceNotFoundException.
    if name is not None:
        raise not_found(f"Thing type {name} does not exist")


@operation("CreateThing")
def create_thing(ctx: ServiceContext, params: Params) -> Params:
    name = params["thingName"]
    _require_no_thing_type(params.get("thingTypeName"))
    if params.get("billingGroupName") is not None:
        raise not_found(f"Billing group {params['billingGroupName']} does not exist")
    attributes = (params.get("attributePayload") or {}).get("attributes") or {}
    attributes = {k: v for k, v in attributes.items() if v != ""}
    with ctx.writing() as conn:
        existing = registry.get_thing(conn, name)
        if existing is not None:
            # Idempotent when nothing differs (AWS: "If this call is made multiple times using
            # the same thing name and configuration, the call will succeed").
            if existing["attributes"] == attributes and existing["thing_type_name"] is None:
                return _created(existing)
            raise already_exists(f"Thing {name} already exists with different attributes",
                                 existing["thing_id"], existing["arn"])
        row = dict(
            name=name,
            thing_id=str(uuid.uuid4()),
            arn=ctx.arn(f"thing/{name}"),
            thing_type_name=None,
            attributes=attributes,
            version=1,
            creation_date=ctx.now(),
        )
        registry.insert_thing(conn, **row)
    return _created(row)


def _created(row: dict[str, Any]) -> Params:
    return {"thingName": row["name"], "thingArn": row["arn"], "thingId": row["thing_id"]}


def _describe(row: dict[str, Any]) -> Params:
    return {
        "defaultClientId": row["name"],
        "thingName": row["name"],
        "thingId": row["thing_id"],
        "thingArn": row["arn"],
        "thingTypeName": row["thing_type_name"],
        "attributes": row["attributes"],
        "version": row["version"],
    }


def require_thing(conn: Any, name: str) -> dict[str, Any]:
    row = registry.get_thing(conn, name)
    if row is None:
        raise not_found(f"Thing {name} cannot be found.")
    return row


@operation("DescribeThing")
def describe_thing(ctx: ServiceContext, params: Params) -> Params:
    with ctx.engine.connect() as conn:
        return _describe(require_thing(conn, params["thingName"]))


@operation("UpdateThing")
def update_thing(ctx: ServiceContext, params: Params) -> Params:
    name = params["thingName"]
    _require_no_thing_type(params.get("thingTypeName"))
    with ctx.writing() as conn:
        row = require_thing(conn, name)
        check_expected_version(params, row, f"Thing {name}")
        payload = params.get("attributePayload")
        attributes = merge_attributes(row["attributes"], payload) if payload is not None else row["attributes"]
        if not registry.update_thing(conn, name, row["version"], attributes=attributes):
            raise version_conflict(f"The version for thing {name} does not match the expected version.")
    return {}


@operation("DeleteThing")
def delete_thing(ctx: ServiceContext, params: Params) -> Params:
    name = params["thingName"]
    with ctx.writing() as conn:
        row = registry.get_thing(conn, name)
        if row is None:
            return {}  # AWS: deleting a thing that does not exist succeeds
        check_expected_version(params, row, f"Thing {name}")
        if thing_principals.has_certificates(conn, name):  # AWS's rule and words
            raise invalid_request(f"Cannot delete. Thing {name} is still attached to one or more principals")
        registry.delete_thing(conn, name)
    return {}


@operation("ListThings")
def list_things(ctx: ServiceContext, params: Params) -> Params:
    attribute_name = params.get("attributeName")
    attribute_value = params.get("attributeValue")
    prefix = bool(params.get("usePrefixAttributeValue"))
    if prefix and attribute_value is None:
        raise invalid_request("usePrefixAttributeValue requires attributeValue")

    def matches(row: Any) -> bool:
        attrs = row.attributes or {}
        if attribute_name is not None and attribute_name not in attrs:
            return False
        if attribute_value is not None:
            values = [attrs[attribute_name]] if attribute_name is not None else list(attrs.values())
            if prefix:
                return any(v.startswith(attribute_value) for v in values)
            return attribute_value in values
        return True

    with ctx.engine.connect() as conn:
        # The database narrows by the attribute (named, or any attribute's value); ``matches``
        # states the rule again for the rows it returns.
        scope = scope_of(params)
        rows = registry.scan_things(conn, decode_token(params.get("nextToken"), scope), params.get("thingTypeName"),
                                    attribute_name, attribute_value, prefix)
        page, token = take_page((r for r in rows if matches(r)), page_size(params.get("maxResults")),
                                lambda r: r.name, scope)
    return {
        "things": [
            {"thingName": r.name, "thingTypeName": r.thing_type_name, "thingArn": r.arn,
             "attributes": r.attributes, "version": r.version}
            for r in page
        ],
        "nextToken": token,
    }


@operation("ListThingGroupsForThing")
def list_thing_groups_for_thing(ctx: ServiceContext, params: Params) -> Params:
    with ctx.engine.connect() as conn:
        require_thing(conn, params["thingName"])
        scope = scope_of(params)
        after = decode_token(params.get("nextToken"), scope)
        names = [n for n in registry.groups_of_thing(conn, params["thingName"]) if after is None or n > after]
        page, token = take_page(names, page_size(params.get("maxResults")), lambda n: n, scope)
        groups = [{"groupName": n, "groupArn": ctx.arn(f"thinggroup/{n}")} for n in page]
    return {"thingGroups": groups, "nextToken": token}
