"""A security profile's detail page: its behaviors in words, targets, retained metrics, alert
targets, tags, and its version history with a diff between any two versions.

Reads and writes go through the AWS operations (DescribeSecurityProfile, UpdateSecurityProfile,
TagResource, ...); only the version history, which AWS does not keep, comes from the store.
"""

from __future__ import annotations

import difflib
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from iotdefender.contract.errors import ApiError, invalid_request
from iotdefender.console.auth import Page, login_required
from iotdefender.console.context import ConsoleContext
from iotdefender.console.wording import alarm_sentence, model_status
from iotdefender.console.writes import Refused, perform, refusal, run, text
from iotdefender.store import profiles as profile_store


def target_label(arn: str) -> tuple[str, str | None]:
    """(what an operator reads, the console link) for a target ARN."""
    resource = arn.split(":", 5)[-1]
    if resource.startswith("thinggroup/"):
        group = resource.removeprefix("thinggroup/")
        return f"thing group {group}", f"/console/thing-groups/{group}"
    return resource, None


def version_diff(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str]]:
    """Line-by-line diff of two versions' documents as (kind, line), kind in + - @ or space."""
    def as_lines(document: dict[str, Any]) -> list[str]:
        return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode().splitlines()

    out = []
    for line in difflib.unified_diff(as_lines(old), as_lines(new), lineterm="", n=3):
        if line.startswith(("---", "+++")):
            continue
        out.append((line[:1] or " ", line))
    return out


def retained_from_text(value: str) -> list[dict[str, Any]]:
    """One metric a line: ``metric [dimension [IN|NOT_IN]] [export]``, e.g.
    ``aws:num-messages-sent topics NOT_IN export``. The operator and ``export`` (the item's
    ``exportMetric``) are written back by ``retained_as_text``: before, saving the form dropped
    both from every item (a NOT_IN dimension became IN, an exported metric stopped being exported)."""
    retained = []
    for line in value.splitlines():
        words = line.split()
        if not words:
            continue
        entry: dict[str, Any] = {"metric": words[0]}
        rest = words[1:]
        if rest and rest[-1].lower() == "export":
            entry["exportMetric"] = True
            rest = rest[:-1]
        if rest:
            entry["metricDimension"] = {"dimensionName": rest[0]}
            if len(rest) > 1:
                entry["metricDimension"]["operator"] = rest[1]  # anything else: refused by the API
        retained.append(entry)
    return retained


def retained_as_text(retained: list[dict[str, Any]]) -> str:
    def line(item: dict[str, Any]) -> str:
        dimension = item.get("metricDimension") or {}
        words = [item["metric"], *([dimension["dimensionName"]] if dimension else []),
                 *([dimension["operator"]] if dimension.get("operator") else []),
                 *(["export"] if item.get("exportMetric") else [])]
        return " ".join(words)
    return "\n".join(line(item) for item in retained)


def routes(console: ConsoleContext) -> dict[str, Page]:
    api = console.api

    def read(name: str, diff_from: int | None, diff_to: int | None) -> dict[str, Any]:
        described = api.invoke("DescribeSecurityProfile", {"securityProfileName": name})
        targets = api.invoke("ListTargetsForSecurityProfile", {"securityProfileName": name})
        tags = api.invoke("ListTagsForResource", {"resourceArn": described["securityProfileArn"]})["tags"]
        with console.engine.connect() as conn:
            history = profile_store.version_history(conn, name)
        by_version = {h["version"]: h for h in history}
        diff = None
        if diff_from is not None and diff_to is not None:
            if diff_from not in by_version or diff_to not in by_version:
                raise invalid_request(f"Version {diff_from if diff_from not in by_version else diff_to} of {name} is not kept; "
                                      f"kept versions: {', '.join(str(v) for v in sorted(by_version)) or 'none'}")
            diff = version_diff(by_version[diff_from]["document"], by_version[diff_to]["document"])
        models = {}
        token: str | None = None
        while True:  # every ML behavior's training summary (10 a page at most)
            page = api.invoke("GetBehaviorModelTrainingSummaries",
                              {"securityProfileName": name, **({"nextToken": token} if token else {})})
            models.update({s["behaviorName"]: model_status(s) for s in page["summaries"]})
            token = page.get("nextToken")
            if not token:
                break
        sns = (described.get("alertTargets") or {}).get("SNS")
        unreached = (console.alert_routes.undeliverable(sns["alertTargetArn"])
                     if sns and console.alert_routes is not None else None)
        return {"profile": described, "models": models, "alert_unreached": unreached, "targets": [target_label(t["arn"]) for t in targets["securityProfileTargets"]],
                "tags": tags, "history": history, "diff": diff,
                "sentences": [alarm_sentence(b) for b in described.get("behaviors") or []],
                "retained_text": retained_as_text(described.get("additionalMetricsToRetainV2") or [])}

    async def show_detail(request: Request, name: str, versions: tuple[int | None, int | None] = (None, None),
                          refused: Refused | None = None) -> Response:
        """The detail page; after a refused form (retained metrics, tags) the same page with that
        form as typed and AWS's reason by it."""
        try:
            data = await run(console, read, name, versions[0], versions[1])
        except ApiError as error:
            return refusal(console, request, "Security profile", refused or error)
        return console.render(request, "profile_detail.html", status_code=refused.status if refused else 200,
                              name=name, diff_from=versions[0], diff_to=versions[1], refused=refused, **data)

    console.refused_pages["securityprofile"] = lambda request, name, refused: show_detail(request, name,
                                                                                          refused=refused)

    @login_required
    async def detail(request: Request) -> Response:
        q = request.query_params
        try:
            versions = (int(q["from"]) if q.get("from") else None, int(q["to"]) if q.get("to") else None)
        except ValueError:
            return console.render(request, "message.html", status_code=400, title="Security profile",
                                  message="InvalidRequestException: versions are whole numbers")
        return await show_detail(request, request.path_params["name"], versions)

    @login_required
    async def save_retained(request: Request) -> Response:
        name = request.path_params["name"]
        form = await request.form()
        retained = retained_from_text(str(form.get("retained", "")))
        params: dict[str, Any] = {"securityProfileName": name}
        if retained:
            params["additionalMetricsToRetainV2"] = retained
        else:
            params["deleteAdditionalMetricsToRetain"] = True
        if text(form, "version").isdigit():
            params["expectedVersion"] = int(text(form, "version"))
        return await perform(console, request, "retained", [("UpdateSecurityProfile", params)],
                             f"/console/profiles/{name}/detail", lambda refused: show_detail(request, name,
                                                                                            refused=refused))

    @login_required
    async def tag(request: Request) -> Response:
        """Add (key and value) or remove (remove=key) one tag of any taggable resource; a refusal
        shows the page of the resource again (by its ARN) with the form as typed."""
        form = await request.form()
        arn = text(form, "resourceArn")
        call: tuple[str, dict[str, Any]]
        if form.get("remove"):
            call = ("UntagResource", {"resourceArn": arn, "tagKeys": [text(form, "remove")]})
        else:
            call = ("TagResource", {"resourceArn": arn, "tags": [{"Key": text(form, "key"),
                                                                   "Value": str(form.get("value", ""))}]})
        kind, _, name = arn.split(":", 5)[-1].partition("/")
        page = console.refused_pages.get(kind)

        async def show(refused: Refused) -> Response:
            if page is None or not name:
                return refusal(console, request, "Tags", refused)
            return await page(request, name, refused)

        return await perform(console, request, "untag" if form.get("remove") else "tag", [call], "/console/", show)

    return {"detail": detail, "save_retained": save_retained, "tag": tag}
