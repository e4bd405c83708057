"""Static thing groups and membership.

CreateThingGroup (with parentGroupName), DescribeThingGroup, UpdateThingGroup, DeleteThingGroup,
ListThingGroups, AddThingToThingGroup, RemoveThingFromThingGroup, UpdateThingGroupsForThing,
ListThingsInThingGroup.
"""

from __future__ import annotations

import uuid
from typing import Any

from iotdefender.contract.errors import already_exists, invalid_request, not_found, version_conflict
from iotdefender.controlplane import hierarchy
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.controlplane.things import require_thing
from iotdefender.controlplane.versioning import check_expected_version, merge_attributes
from iotdefender.store import profiles, registry, tags
from iotdefender.controlplane.pagination import decode_token, page_size, scope_of, take_page
from iotdefender.controlplane.tag_rules import checked_tags

operation = OperationTable()

MAX_GROUPS_PER_THING = 10  # AWS IoT quota: a thing belongs directly to at most 10 thing groups


def require_group(conn: Any, name: str) -> dict[str, Any]:
    row = registry.get_group(conn, name)
    if row is None:
        raise not_found(f"Thing group {name} does not exist")
    return row


def _properties(row: dict[str, Any]) -> Params:
    return {
        "thingGroupDescription": row["description"],
        "attributePayload": {"attributes": row["attributes"]},
    }


@operation("CreateThingGroup")
def create_thing_group(ctx: ServiceContext, params: Params) -> Params:
    name = params["thingGroupName"]
    parent = params.get("parentGroupName")
    props = params.get("thingGroupProperties") or {}
    description = props.get("thingGroupDescription")
    attributes = (props.get("attributePayload") or {}).get("attributes") or {}
    tag_list = checked_tags(params.get("tags"))
    with ctx.writing() as conn:
        existing = registry.get_group(conn, name)
        if existing is not None:
            same = (existing["parent_name"] == parent and existing["description"] == description
                    and existing["attributes"] == attributes)
            if same:
                return _created(existing)
            raise already_exists(f"Thing Group {name} already exists with different tags or properties",
                                 existing["group_id"], existing["arn"])
        if parent is not None:
            if registry.get_group(conn, parent) is None:
                raise invalid_request(f"Parent thing group {parent} does not exist")
            if hierarchy.depth(parent, registry.all_group_parents(conn)) >= hierarchy.MAX_DEPTH:
                raise invalid_request(
                    f"Thing group {name} cannot be created: a hierarchy has at most {hierarchy.MAX_DEPTH} levels"
                )
        row = dict(
            name=name,
            group_id=str(uuid.uuid4()),
            arn=ctx.arn(f"thinggroup/{name}"),
            parent_name=parent,
            description=description,
            attributes=attributes,
            version=1,
            creation_date=ctx.now(),
        )
        registry.insert_group(conn, **row)
        tags.replace(conn, row["arn"], tag_list)
    return _created(row)


def _created(row: dict[str, Any]) -> Params:
    return {"thingGroupName": row["name"], "thingGroupArn": row["arn"], "thingGroupId": row["group_id"]}


@operation("DescribeThingGroup")
def describe_thing_group(ctx: ServiceContext, params: Params) -> Params:
    with ctx.engine.connect() as conn:
        row = require_group(conn, params["thingGroupName"])
        chain = list(reversed(hierarchy.ancestors(row["name"], registry.all_group_parents(conn))))
    metadata: Params = {"creationDate": row["creation_date"]}
    if row["parent_name"] is not None:
        metadata["parentGroupName"] = row["parent_name"]
        metadata["rootToParentThingGroups"] = [
            {"groupName": g, "groupArn": ctx.arn(f"thinggroup/{g}")} for g in chain
        ]
    return {
        "thingGroupName": row["name"],
        "thingGroupId": row["group_id"],
        "thingGroupArn": row["arn"],
        "version": row["version"],
        "thingGroupProperties": _properties(row),
        "thingGroupMetadata": metadata,
    }


@operation("UpdateThingGroup")
def update_thing_group(ctx: ServiceContext, params: Params) -> Params:
    name = params["thingGroupName"]
    props = params["thingGroupProperties"]
    with ctx.writing() as conn:
        row = require_group(conn, name)
        check_expected_version(params, row, f"Thing group {name}")
        values: Params = {}
        if "thingGroupDescription" in props:
            values["description"] = props["thingGroupDescription"]
        if props.get("attributePayload") is not None:
            values["attributes"] = merge_attributes(row["attributes"], props["attributePayload"])
        if not registry.update_group(conn, name, row["version"], **values):
            raise version_conflict(f"The version for thing group {name} does not match the expected version.")
    return {"version": row["version"] + 1}


@operation("DeleteThingGroup")
def delete_thing_group(ctx: ServiceContext, params: Params) -> Params:
    name = params["thingGroupName"]
    with ctx.writing() as conn:
        row = registry.get_group(conn, name)
        if row is None:
            return {}  # DeleteThingGroup has no ResourceNotFoundException: deleting nothing succeeds
        check_expected_version(params, row, f"Thing group {name}")
        if registry.child_group_names(conn, name):
            # AWS's words (developer guide, thing-groups.html: "Cannot delete thing group : RedLights
            # when there are still child groups attached to it.")
            raise invalid_request(f"Cannot delete thing group : {name} when there are still child groups attached to it.")
        # The group's ARN stops existing, so do the security profiles attached to it and its tags.
        profiles.detach_target(conn, row["arn"])
        tags.replace(conn, row["arn"], [])
        registry.delete_group(conn, name)
    return {}


@operation("ListThingGroups")
def list_thing_groups(ctx: ServiceContext, params: Params) -> Params:
    parent = params.get("parentGroup")
    prefix = params.get("namePrefixFilter")
    recursive = params.get("recursive")
    with ctx.engine.connect() as conn:
        parents = registry.all_group_parents(conn)
        if parent is not None:
            if parent not in parents:
                raise not_found(f"Thing group {parent} does not exist")
            allowed = set(hierarchy.descendants(parent, parents)) if recursive else {
                g for g, p in parents.items() if p == parent}
        elif recursive is False:
            allowed = {g for g, p in parents.items() if p is None}
        else:
            allowed = set(parents)
        scope = scope_of(params)
        after = decode_token(params.get("nextToken"), scope)
        names = sorted(n for n in allowed if (prefix is None or n.startswith(prefix)) and (after is None or n > after))
        page, token = take_page(names, page_size(params.get("maxResults")), lambda n: n, scope)
    return {
        "thingGroups": [{"groupName": n, "groupArn": ctx.arn(f"thinggroup/{n}")} for n in page],
        "nextToken": token,
    }


def _resolve_names(ctx: ServiceContext, conn: Any, params: Params) -> tuple[dict[str, Any], dict[str, Any]]:
    """Membership calls name the group and the thing by name or by ARN."""
    group_name = params.get("thingGroupName")
    if group_name is None and params.get("thingGroupArn"):
        group = registry.get_group_by_arn(conn, params["thingGroupArn"])
        if group is None:
            raise not_found(f"Thing group {params['thingGroupArn']} does not exist")
    elif group_name is not None:
        group = require_group(conn, group_name)
    else:
        raise invalid_request("thingGroupName or thingGroupArn is required")
    thing_name = params.get("thingName")
    if thing_name is None and params.get("thingArn"):
        prefix = ctx.arn("thing/")
        if not params["thingArn"].startswith(prefix):
            raise not_found(f"Thing {params['thingArn']} cannot be found.")
        thing_name = params["thingArn"][len(prefix):]
    if thing_name is None:
        raise invalid_request("thingName or thingArn is required")
    return group, require_thing(conn, thing_name)


def _join(conn: Any, group: str, thing: str) -> None:
    """``thing`` into ``group``, within AWS IoT's rules: at most 10 groups, one per hierarchy."""
    join_all(conn, [group], thing)


def join_all(conn: Any, groups: list[str], thing: str) -> bool:
    """``thing`` into every one of ``groups`` (which exist), or, refused, into none. Whether it
    joined any."""
    joining = groups_to_join(thing, registry.groups_of_thing(conn, thing), groups, registry.all_group_parents(conn))
    for group in joining:
        registry.add_member(conn, group, thing)
    return bool(joining)


def groups_to_join(thing: str, current: list[str], groups: list[str], parents: dict[str, str | None]) -> list[str]:
    """Which of ``groups`` (which exist) ``thing``, in ``current``, joins; InvalidRequestException
    when AWS IoT's rules refuse one (at most 10 groups, one per hierarchy): every rule is checked
    before anything is written, so several groups are joined whole or not at all (a mitigation
    action's). Pure: a mitigation task checks a batch of things against one read of the registry."""
    joining = [group for group in dict.fromkeys(groups) if group not in current]
    if not joining:
        return []
    if len(current) + len(joining) > MAX_GROUPS_PER_THING:
        raise invalid_request(f"Thing {thing} already belongs to {len(current)} thing groups: "
                              f"{MAX_GROUPS_PER_THING} is the maximum")
    roots = {hierarchy.root_of(other, parents): other for other in current}
    for group in joining:
        root = hierarchy.root_of(group, parents)
        if root in roots:
            # AWS IoT: a thing can be in at most one group of a given hierarchy.
            raise invalid_request(f"Thing {thing} is already in thing group {roots[root]} of the same hierarchy")
        roots[root] = group
    return joining


@operation("AddThingToThingGroup")
def add_thing_to_thing_group(ctx: ServiceContext, params: Params) -> Params:
    with ctx.writing() as conn:
        group, thing = _resolve_names(ctx, conn, params)
        _join(conn, group["name"], thing["name"])
    return {}


@operation("RemoveThingFromThingGroup")
def remove_thing_from_thing_group(ctx: ServiceContext, params: Params) -> Params:
    with ctx.writing() as conn:
        group, thing = _resolve_names(ctx, conn, params)
        registry.remove_member(conn, group["name"], thing["name"])
    return {}


@operation("UpdateThingGroupsForThing")
def update_thing_groups_for_thing(ctx: ServiceContext, params: Params) -> Params:
    """Removals first, then additions, in one transaction: moving a thing to another group of the
    same hierarchy is one call, and a refused addition (an unknown group, the 10-group limit) leaves
    its groups as they were. ``overrideDynamicGroups`` changes nothing: there are no dynamic groups
    here (AWS: it only drops a dynamic group when the limit is reached)."""
    thing_name = params.get("thingName")
    if thing_name is None:
        raise invalid_request("thingName is required")
    to_remove = params.get("thingGroupsToRemove") or []
    to_add = params.get("thingGroupsToAdd") or []
    with ctx.writing() as conn:
        thing = require_thing(conn, thing_name)
        for name in [*to_remove, *to_add]:
            require_group(conn, name)
        for name in to_remove:
            registry.remove_member(conn, name, thing["name"])
        for name in to_add:
            _join(conn, name, thing["name"])
    return {}


@operation("ListThingsInThingGroup")
def list_things_in_thing_group(ctx: ServiceContext, params: Params) -> Params:
    name = params["thingGroupName"]
    with ctx.engine.connect() as conn:
        require_group(conn, name)
        groups = [name]
        if params.get("recursive"):
            groups += hierarchy.descendants(name, registry.all_group_parents(conn))
        scope = scope_of(params)
        names = registry.scan_members(conn, groups, decode_token(params.get("nextToken"), scope))
        page, token = take_page(names, page_size(params.get("maxResults")), lambda n: n, scope)
    return {"things": page, "nextToken": token}
