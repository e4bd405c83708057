"""The Detect resources beyond security profiles: custom metrics, dimensions, thing groups (their
hierarchy, members and attached profiles) and their tags.

Lists and details read through the AWS operations (ListCustomMetrics, DescribeDimension,
ListThingsInThingGroup, ...) and every form runs one (CreateCustomMetric, AddThingToThingGroup,
AttachSecurityProfile, ...) through ``writes.perform``, so the console accepts and refuses exactly
what the API does.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from iotdefender.contract.errors import ApiError
from iotdefender.console.auth import Page, login_required
from iotdefender.console.context import ConsoleContext
from iotdefender.console.writes import lines, perform, refusal, run, text
from iotdefender.store import registry

METRIC_TYPES = ["string-list", "ip-address-list", "number-list", "number"]
MAX = 250


def request_token(form: Any) -> str:
    """The form's idempotency token (one per rendered form, so a double submit creates once)."""
    return text(form, "clientRequestToken") or str(uuid.uuid4())


def group_tree(parents: dict[str, str | None]) -> list[tuple[str, int]]:
    """(group, depth) in depth-first order, children sorted by name: the hierarchy as an outline."""
    children: dict[str | None, list[str]] = {}
    for group, parent in parents.items():
        children.setdefault(parent if parent in parents else None, []).append(group)
    out: list[tuple[str, int]] = []

    def visit(parent: str | None, depth: int) -> None:
        for group in sorted(children.get(parent, [])):
            out.append((group, depth))
            visit(group, depth + 1)

    visit(None, 0)
    return out


def routes(console: ConsoleContext) -> dict[str, Page]:
    api = console.api

    def list_all(operation: str, key: str, params: dict[str, Any] | None = None) -> list[Any]:
        items, token = [], None
        while True:
            page = api.invoke(operation, {**(params or {}), "maxResults": MAX, **({"nextToken": token} if token else {})})
            items += page[key]
            token = page.get("nextToken")
            if not token:
                return items

    @login_required
    async def custom_metrics(request: Request) -> Response:
        if request.method == "POST":
            form = await request.form()
            params = {"metricName": text(form, "metricName"), "metricType": text(form, "metricType"),
                      "clientRequestToken": request_token(form)}
            if text(form, "displayName"):
                params["displayName"] = text(form, "displayName")
            return await perform(console, request, "Custom metrics", [("CreateCustomMetric", params)],
                                 "/console/custom-metrics")

        def read() -> list[dict[str, Any]]:
            return [api.invoke("DescribeCustomMetric", {"metricName": n})
                    for n in list_all("ListCustomMetrics", "metricNames")]

        return console.render(request, "custom_metrics.html", metrics=await run(console, read), types=METRIC_TYPES,
                              request_token=str(uuid.uuid4()))

    @login_required
    async def delete_custom_metric(request: Request) -> Response:
        return await perform(console, request, "Custom metrics",
                             [("DeleteCustomMetric", {"metricName": request.path_params["name"]})],
                             "/console/custom-metrics")

    @login_required
    async def dimensions(request: Request) -> Response:
        if request.method == "POST":
            form = await request.form()
            params = {"name": text(form, "name"), "type": "TOPIC_FILTER",
                      "stringValues": lines(str(form.get("stringValues", ""))),
                      "clientRequestToken": request_token(form)}
            return await perform(console, request, "Dimensions", [("CreateDimension", params)], "/console/dimensions")

        def read() -> list[dict[str, Any]]:
            return [api.invoke("DescribeDimension", {"name": n}) for n in list_all("ListDimensions", "dimensionNames")]

        return console.render(request, "dimensions.html", dimensions=await run(console, read),
                              request_token=str(uuid.uuid4()))

    @login_required
    async def delete_dimension(request: Request) -> Response:
        return await perform(console, request, "Dimensions", [("DeleteDimension", {"name": request.path_params["name"]})],
                             "/console/dimensions")

    @login_required
    async def thing_groups(request: Request) -> Response:
        if request.method == "POST":
            form = await request.form()
            params: dict[str, Any] = {"thingGroupName": text(form, "thingGroupName")}
            if text(form, "parentGroupName"):
                params["parentGroupName"] = text(form, "parentGroupName")
            if text(form, "description"):
                params["thingGroupProperties"] = {"thingGroupDescription": text(form, "description")}
            return await perform(console, request, "Thing groups", [("CreateThingGroup", params)],
                                 "/console/thing-groups")

        def read() -> list[tuple[str, int]]:
            with console.engine.connect() as conn:
                return group_tree(registry.all_group_parents(conn))

        return console.render(request, "thing_groups.html", tree=await run(console, read))

    @login_required
    async def thing_group(request: Request) -> Response:
        name = request.path_params["name"]

        def read() -> dict[str, Any]:
            described = api.invoke("DescribeThingGroup", {"thingGroupName": name})
            arn = described["thingGroupArn"]
            attached = api.invoke("ListSecurityProfilesForTarget", {"securityProfileTargetArn": arn})
            members = api.invoke("ListThingsInThingGroup", {"thingGroupName": name, "maxResults": MAX})
            return {"group": described,
                    "children": [g["groupName"] for g in list_all("ListThingGroups", "thingGroups",
                                                                  {"parentGroup": name})],
                    "members": members["things"], "more_members": bool(members.get("nextToken")),
                    "attached": [m["securityProfileIdentifier"]["name"]
                                 for m in attached["securityProfileTargetMappings"]],
                    "profile_names": [p["name"] for p in list_all("ListSecurityProfiles",
                                                                  "securityProfileIdentifiers")],
                    "tags": api.invoke("ListTagsForResource", {"resourceArn": arn})["tags"]}

        try:
            data = await run(console, read)
        except ApiError as error:
            return refusal(console, request, "Thing group", error)
        return console.render(request, "thing_group.html", name=name, **data)

    @login_required
    async def thing_group_action(request: Request) -> Response:
        """Members, attached profiles and deletion of one group, each one AWS operation."""
        name, action = request.path_params["name"], request.path_params["action"]
        form = await request.form()
        back = f"/console/thing-groups/{name}"
        arn = console.arn(f"thinggroup/{name}")
        calls = {
            "add-thing": ("AddThingToThingGroup", {"thingGroupName": name, "thingName": text(form, "thingName")}),
            "remove-thing": ("RemoveThingFromThingGroup", {"thingGroupName": name, "thingName": text(form, "thingName")}),
            "attach": ("AttachSecurityProfile", {"securityProfileName": text(form, "securityProfileName"),
                                                 "securityProfileTargetArn": arn}),
            "detach": ("DetachSecurityProfile", {"securityProfileName": text(form, "securityProfileName"),
                                                 "securityProfileTargetArn": arn}),
            "delete": ("DeleteThingGroup", {"thingGroupName": name}),
        }
        if action not in calls:
            return console.render(request, "message.html", status_code=404, title="Thing group",
                                  message=f"No action {action!r}: use one of {', '.join(calls)}.")
        if action == "add-thing":
            return await add_thing(request, name, text(form, "thingName"), bool(form.get("register")), back)
        return await perform(console, request, "Thing group", [calls[action]],
                             "/console/thing-groups" if action == "delete" else back)

    async def add_thing(request: Request, group: str, thing: str, register: bool, back: str) -> Response:
        """AWS groups hold registered things only, and a device that reports is not registered
        until someone does it: with ``register`` the thing is registered first when it is not."""
        def add() -> None:
            if register:
                try:
                    api.invoke("DescribeThing", {"thingName": thing})
                except ApiError as error:
                    if error.code != "ResourceNotFoundException":
                        raise
                    api.invoke("CreateThing", {"thingName": thing})
            api.invoke("AddThingToThingGroup", {"thingGroupName": group, "thingName": thing})

        try:
            await run(console, add)
        except ApiError as error:
            if error.code == "ResourceNotFoundException" and not register and "Thing " in error.message:
                error = ApiError(error.code, f"{error.message.rstrip('.')}. Groups hold registered things only: "
                                             f"tick 'register it first' to register {thing} and add it.")
            return refusal(console, request, "Thing group", error)
        return RedirectResponse(back, status_code=303)

    return {"custom_metrics": custom_metrics, "delete_custom_metric": delete_custom_metric,
            "dimensions": dimensions, "delete_dimension": delete_dimension, "thing_groups": thing_groups,
            "thing_group": thing_group, "thing_group_action": thing_group_action}
