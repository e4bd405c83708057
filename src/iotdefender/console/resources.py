"""The Detect resources beyond security profiles: custom metrics, dimensions, thing groups (their
hierarchy, members and attached profiles) and their tags.

Lists and details read through the AWS operations (ListCustomMetrics, DescribeDimension,
ListThingGroups, ...) and every form runs one (CreateCustomMetric, AddThingToThingGroup,
AttachSecurityProfile, ...) through the API, so the console accepts and refuses exactly what the
API does; a refused form comes back as typed, with the reason by it. Two reads go to the store: the
group outline, and a group's members, which page back as well as forth by name
(``registry.member_page``), which ListThingsInThingGroup's forward-only token cannot.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from iotdefender.contract.errors import ApiError
from iotdefender.contract.service_model import service_model
from iotdefender.contract.validation import validate_value
from iotdefender.console.auth import Page, login_required
from iotdefender.console.context import ConsoleContext
from iotdefender.console.writes import Calls, Refused, lines, perform, refusal, run, text
from iotdefender.store import registry

METRIC_TYPES = ["string-list", "ip-address-list", "number-list", "number"]
MAX = 250
MEMBERS_PAGE = 250  # members per page of a thing group


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


def every_page(api: Any, operation: str, key: str, params: dict[str, Any] | None = None) -> list[Any]:
    """Every item of a listing operation, page after page (blocking: run it off the event loop)."""
    items: list[Any] = []
    token = None
    while True:
        page = api.invoke(operation, {**(params or {}), "maxResults": MAX, **({"nextToken": token} if token else {})})
        items += page.get(key) or []
        token = page.get("nextToken")
        if not token:
            return items


def routes(console: ConsoleContext) -> dict[str, Page]:
    api = console.api

    def list_all(operation: str, key: str, params: dict[str, Any] | None = None) -> list[Any]:
        return every_page(api, operation, key, params)

    async def custom_metrics_page(request: Request, refused: Refused | None = None) -> Response:
        def read() -> list[dict[str, Any]]:
            return [api.invoke("DescribeCustomMetric", {"metricName": n})
                    for n in list_all("ListCustomMetrics", "metricNames")]

        return console.render(request, "custom_metrics.html", status_code=refused.status if refused else 200,
                              metrics=await run(console, read), types=METRIC_TYPES, request_token=str(uuid.uuid4()),
                              refused=refused)

    @login_required
    async def custom_metrics(request: Request) -> Response:
        if request.method != "POST":
            return await custom_metrics_page(request)
        form = await request.form()
        params = {"metricName": text(form, "metricName"), "metricType": text(form, "metricType"),
                  "clientRequestToken": request_token(form)}
        if text(form, "displayName"):
            params["displayName"] = text(form, "displayName")
        return await perform(console, request, "create", [("CreateCustomMetric", params)], "/console/custom-metrics",
                             lambda refused: custom_metrics_page(request, refused))

    @login_required
    async def custom_metric_action(request: Request) -> Response:
        """Update (its display name) or delete one custom metric."""
        name, action = request.path_params["name"], request.path_params["action"]
        form = await request.form()
        calls = {"update": ("UpdateCustomMetric", {"metricName": name, "displayName": text(form, "displayName")}),
                 "delete": ("DeleteCustomMetric", {"metricName": name})}
        if action not in calls:
            return unknown_action(request, "Custom metrics", action, calls)
        return await perform(console, request, f"{action}:{name}", [calls[action]], "/console/custom-metrics",
                             lambda refused: custom_metrics_page(request, refused))

    async def dimensions_page(request: Request, refused: Refused | None = None) -> Response:
        def read() -> list[dict[str, Any]]:
            return [api.invoke("DescribeDimension", {"name": n}) for n in list_all("ListDimensions", "dimensionNames")]

        return console.render(request, "dimensions.html", status_code=refused.status if refused else 200,
                              dimensions=await run(console, read), request_token=str(uuid.uuid4()), refused=refused)

    @login_required
    async def dimensions(request: Request) -> Response:
        if request.method != "POST":
            return await dimensions_page(request)
        form = await request.form()
        params = {"name": text(form, "name"), "type": "TOPIC_FILTER",
                  "stringValues": lines(str(form.get("stringValues", ""))), "clientRequestToken": request_token(form)}
        return await perform(console, request, "create", [("CreateDimension", params)], "/console/dimensions",
                             lambda refused: dimensions_page(request, refused))

    @login_required
    async def dimension_action(request: Request) -> Response:
        """Update (its topic filters) or delete one dimension."""
        name, action = request.path_params["name"], request.path_params["action"]
        form = await request.form()
        calls = {"update": ("UpdateDimension", {"name": name,
                                                "stringValues": lines(str(form.get("stringValues", "")))}),
                 "delete": ("DeleteDimension", {"name": name})}
        if action not in calls:
            return unknown_action(request, "Dimensions", action, calls)
        return await perform(console, request, f"{action}:{name}", [calls[action]], "/console/dimensions",
                             lambda refused: dimensions_page(request, refused))

    def unknown_action(request: Request, title: str, action: str, actions: dict[str, Any]) -> Response:
        return console.render(request, "message.html", status_code=404, title=title,
                              message=f"No action {action!r}: use one of {', '.join(actions)}.")

    async def thing_groups_page(request: Request, refused: Refused | None = None) -> Response:
        def read() -> list[tuple[str, int]]:
            with console.engine.connect() as conn:
                return group_tree(registry.all_group_parents(conn))

        return console.render(request, "thing_groups.html", status_code=refused.status if refused else 200,
                              tree=await run(console, read), refused=refused)

    @login_required
    async def thing_groups(request: Request) -> Response:
        if request.method != "POST":
            return await thing_groups_page(request)
        form = await request.form()
        params: dict[str, Any] = {"thingGroupName": text(form, "thingGroupName")}
        if text(form, "parentGroupName"):
            params["parentGroupName"] = text(form, "parentGroupName")
        if text(form, "description"):
            params["thingGroupProperties"] = {"thingGroupDescription": text(form, "description")}
        return await perform(console, request, "create", [("CreateThingGroup", params)], "/console/thing-groups",
                             lambda refused: thing_groups_page(request, refused))

    def read_group(name: str, after: str | None, before: str | None) -> dict[str, Any]:
        """The group page's contents: one page of members (MEMBERS_PAGE, by name), its
        attached profiles, child groups and tags."""
        described = api.invoke("DescribeThingGroup", {"thingGroupName": name})
        arn = described["thingGroupArn"]
        attached = api.invoke("ListSecurityProfilesForTarget", {"securityProfileTargetArn": arn})
        with console.engine.connect() as conn:
            members, earlier, later = registry.member_page(conn, name, MEMBERS_PAGE, after=after, before=before)
            total = registry.count_members(conn, name)
        return {"group": described,
                "children": [g["groupName"] for g in list_all("ListThingGroups", "thingGroups", {"parentGroup": name})],
                "members": members, "member_count": total, "earlier": earlier, "later": later,
                "attached": [m["securityProfileIdentifier"]["name"] for m in attached["securityProfileTargetMappings"]],
                "profile_names": [p["name"] for p in list_all("ListSecurityProfiles", "securityProfileIdentifiers")],
                "tags": api.invoke("ListTagsForResource", {"resourceArn": arn})["tags"]}

    async def show_group(request: Request, name: str, after: str | None = None, before: str | None = None,
                         refused: Refused | None = None) -> Response:
        """The group page; after a refused form the same page with that form as typed and the
        reason by it, or, when the group itself cannot be read (it does not exist), the refusal alone."""
        try:
            data = await run(console, read_group, name, after, before)
        except ApiError as error:
            return refusal(console, request, "Thing group", refused or error)
        return console.render(request, "thing_group.html", status_code=refused.status if refused else 200,
                              name=name, refused=refused, **data)

    console.refused_pages["thinggroup"] = lambda request, name, refused: show_group(request, name, refused=refused)

    @login_required
    async def thing_group(request: Request) -> Response:
        q = request.query_params
        after, before = q.get("after"), q.get("before")
        try:
            for key, value in (("after", after), ("before", before)):
                if value is not None:
                    validate_value(service_model().shape_for("ThingName"), value, key)
        except ApiError as error:
            return refusal(console, request, "Thing group", error)
        return await show_group(request, request.path_params["name"], after, None if after else before)

    @login_required
    async def thing_group_action(request: Request) -> Response:
        """Members, attached profiles and deletion of one group, each one AWS operation; a
        refusal shows the group again with what was typed."""
        name, action = request.path_params["name"], request.path_params["action"]
        form = await request.form()
        arn = console.arn(f"thinggroup/{name}")
        thing, profile = text(form, "thingName"), text(form, "securityProfileName")
        calls: dict[str, Calls] = {
            "add-thing": lambda: add_thing(name, thing, bool(form.get("register"))),
            "remove-thing": [("RemoveThingFromThingGroup", {"thingGroupName": name, "thingName": thing})],
            "attach": [("AttachSecurityProfile", {"securityProfileName": profile, "securityProfileTargetArn": arn})],
            "detach": [("DetachSecurityProfile", {"securityProfileName": profile, "securityProfileTargetArn": arn})],
            "delete": [("DeleteThingGroup", {"thingGroupName": name})],
        }
        if action not in calls:
            return unknown_action(request, "Thing group", action, calls)
        back = "/console/thing-groups" if action == "delete" else f"/console/thing-groups/{name}"
        return await perform(console, request, action, calls[action], back,
                             lambda refused: show_group(request, name, refused=refused))

    def add_thing(group: str, thing: str, register: bool) -> None:
        """AWS groups hold registered things only, and a device that reports is not registered
        until someone does it: with ``register`` the thing is registered first when it is not."""
        try:
            if register:
                try:
                    api.invoke("DescribeThing", {"thingName": thing})
                except ApiError as error:
                    if error.code != "ResourceNotFoundException":
                        raise
                    api.invoke("CreateThing", {"thingName": thing})
            api.invoke("AddThingToThingGroup", {"thingGroupName": group, "thingName": thing})
        except ApiError as error:
            if error.code == "ResourceNotFoundException" and not register and "Thing " in error.message:
                raise ApiError(error.code, f"{error.message.rstrip('.')}. Groups hold registered things only: "
                                           f"tick 'register it first' to register {thing} and add it.") from None
            raise

    return {"custom_metrics": custom_metrics, "custom_metric_action": custom_metric_action,
            "dimensions": dimensions, "dimension_action": dimension_action, "thing_groups": thing_groups,
            "thing_group": thing_group, "thing_group_action": thing_group_action}
