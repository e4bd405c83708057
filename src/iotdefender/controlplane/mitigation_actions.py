"""Mitigation actions: CreateMitigationAction, DescribeMitigationAction, UpdateMitigationAction,
DeleteMitigationAction, ListMitigationActions.

An action is one of AWS's six types, given by which member of ``actionParams`` is set (exactly one).
All six are stored and listed as AWS does; Detect mitigation tasks apply ADD_THINGS_TO_THING_GROUP,
the only type AWS applies to Detect alarms (its developer guide, "Detect mitigation actions"); the
others belong to Device Defender Audit, which iotdefender does not have. ``roleArn`` is stored and
returned: there is no IAM here, the service applies the action itself.

Where AWS is silent: an ADD_THINGS_TO_THING_GROUP action naming a group that does not exist, or two
groups of one hierarchy (a thing can be in one group of a hierarchy: the second would always fail),
is refused when it is created or updated rather than failing at every execution; an update cannot
change the action's type (as a dimension's: delete it and create another).
"""

from __future__ import annotations

import uuid
from typing import Any

from iotdefender.contract.errors import already_exists, invalid_request, limit_exceeded, not_found
from iotdefender.controlplane import hierarchy
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.controlplane.pagination import decode_token, page_size, scope_of, take_page
from iotdefender.controlplane.tag_rules import checked_tags
from iotdefender.store import catalog, mitigation, registry, tags

operation = OperationTable()

MAX_ACTIONS = 100  # AWS quota "Mitigation actions: 100" (not adjustable)
ADD_THINGS_TO_THING_GROUP = "ADD_THINGS_TO_THING_GROUP"
#: actionParams member -> the action type it makes.
TYPE_OF_PARAMS = {
    "updateDeviceCertificateParams": "UPDATE_DEVICE_CERTIFICATE",
    "updateCACertificateParams": "UPDATE_CA_CERTIFICATE",
    "addThingsToThingGroupParams": ADD_THINGS_TO_THING_GROUP,
    "replaceDefaultPolicyVersionParams": "REPLACE_DEFAULT_POLICY_VERSION",
    "enableIoTLoggingParams": "ENABLE_IOT_LOGGING",
    "publishFindingToSnsParams": "PUBLISH_FINDING_TO_SNS",
}


def require_action(conn: Any, name: str) -> dict[str, Any]:
    row = catalog.get(conn, "mitigation_action", name)
    if row is None:
        raise not_found(f"Mitigation action {name} does not exist")
    return row


def definition(row: dict[str, Any]) -> Params:
    """The action as a task reports it (``MitigationAction``)."""
    return {"name": row["name"], "id": row["action_id"], "roleArn": row["role_arn"],
            "actionParams": row["action_params"]}


def _action_type(conn: Any, params: Params) -> str:
    """The type ``actionParams`` makes, once its content is checked."""
    given = [member for member, value in params.items() if member in TYPE_OF_PARAMS and value is not None]
    if len(given) != 1:
        raise invalid_request("actionParams must set exactly one of " + ", ".join(TYPE_OF_PARAMS)
                              + (f"; it sets {', '.join(given)}" if given else ""))
    (member,) = given
    if member == "enableIoTLoggingParams" and params[member].get("logLevel") == "DISABLED":
        raise invalid_request("enableIoTLoggingParams.logLevel cannot be DISABLED")
    if member == "addThingsToThingGroupParams":
        _check_groups(conn, params[member]["thingGroupNames"])
    return TYPE_OF_PARAMS[member]


def _check_groups(conn: Any, names: list[str]) -> None:
    parents = registry.all_group_parents(conn)
    missing = [name for name in names if name not in parents]
    if missing:
        raise invalid_request(f"Thing group(s) {', '.join(missing)} of addThingsToThingGroupParams do not exist")
    by_root: dict[str, str] = {}
    for name in dict.fromkeys(names):
        root = hierarchy.root_of(name, parents)
        if root in by_root:
            raise invalid_request(f"Thing groups {by_root[root]} and {name} are in the same hierarchy: "
                                  "a thing can be in only one group of a hierarchy")
        by_root[root] = name


@operation("CreateMitigationAction", changes_monitoring=False)
def create_mitigation_action(ctx: ServiceContext, params: Params) -> Params:
    name = params["actionName"]
    tag_list = checked_tags(params.get("tags"))
    with ctx.writing() as conn:
        existing = catalog.get(conn, "mitigation_action", name)
        if existing is not None:
            raise already_exists(f"Mitigation action {name} already exists", existing["action_id"], existing["arn"])
        action_type = _action_type(conn, params["actionParams"])
        if catalog.count(conn, "mitigation_action") >= MAX_ACTIONS:
            raise limit_exceeded(f"The account already has {MAX_ACTIONS} mitigation actions, the maximum")
        now = ctx.now()
        row = dict(name=name, arn=ctx.arn(f"mitigationaction/{name}"), action_id=str(uuid.uuid4()),
                   action_type=action_type, role_arn=params["roleArn"], action_params=params["actionParams"],
                   creation_date=now, last_modified_date=now)
        catalog.insert(conn, "mitigation_action", **row)
        tags.replace(conn, row["arn"], tag_list)
    return {"actionArn": row["arn"], "actionId": row["action_id"]}


@operation("DescribeMitigationAction")
def describe_mitigation_action(ctx: ServiceContext, params: Params) -> Params:
    with ctx.engine.connect() as conn:
        row = require_action(conn, params["actionName"])
    return {"actionName": row["name"], "actionType": row["action_type"], "actionArn": row["arn"],
            "actionId": row["action_id"], "roleArn": row["role_arn"], "actionParams": row["action_params"],
            "creationDate": row["creation_date"], "lastModifiedDate": row["last_modified_date"]}


@operation("UpdateMitigationAction", changes_monitoring=False)
def update_mitigation_action(ctx: ServiceContext, params: Params) -> Params:
    name = params["actionName"]
    with ctx.writing() as conn:
        row = require_action(conn, name)
        values: dict[str, Any] = {"last_modified_date": ctx.now()}
        if params.get("roleArn") is not None:
            values["role_arn"] = params["roleArn"]
        if params.get("actionParams") is not None:
            action_type = _action_type(conn, params["actionParams"])
            if action_type != row["action_type"]:
                raise invalid_request(f"Mitigation action {name} is of type {row['action_type']}: its type cannot "
                                      f"change to {action_type} (delete it and create another)")
            values["action_params"] = params["actionParams"]
        catalog.update(conn, "mitigation_action", name, **values)
    return {"actionArn": row["arn"], "actionId": row["action_id"]}


@operation("DeleteMitigationAction", changes_monitoring=False)
def delete_mitigation_action(ctx: ServiceContext, params: Params) -> Params:
    """A task started with the action keeps its definition (``actionsDefinition``) and goes on."""
    with ctx.writing() as conn:
        row = catalog.get(conn, "mitigation_action", params["actionName"])
        if row is None:
            return {}  # the model has no ResourceNotFoundException here: deleting nothing succeeds
        catalog.delete(conn, "mitigation_action", row["name"])
        tags.replace(conn, row["arn"], [])
    return {}


@operation("ListMitigationActions")
def list_mitigation_actions(ctx: ServiceContext, params: Params) -> Params:
    """By name (AWS documents no order)."""
    scope = scope_of(params)
    with ctx.engine.connect() as conn:
        rows = mitigation.scan_actions(conn, params.get("actionType"), decode_token(params.get("nextToken"), scope))
        page, token = take_page(rows, page_size(params.get("maxResults")), lambda row: row.name, scope)
    return {"actionIdentifiers": [{"actionName": row.name, "actionArn": row.arn, "creationDate": row.creation_date}
                                  for row in page],
            "nextToken": token}
