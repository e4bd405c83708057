"""The console's writes: create and edit security profiles, attach targets, set verification states.

Each form runs the same AWS operations as the API (CreateSecurityProfile, UpdateSecurityProfile,
AttachSecurityProfile, ...) with the same validation, so the console can never store a profile the
API would refuse; a refusal comes back through ``writes.perform`` as every console form's does, the
form as it was typed with the reason next to the field it concerns.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from iotdefender.contract.errors import ApiError
from iotdefender.console.auth import Page, login_required
from iotdefender.console.context import ConsoleContext
from iotdefender.console.writes import Refused, Rejected, perform, refusal, run
from iotdefender.store import insights

FLEET_TARGETS = ("all/things", "all/registered-things", "all/unregistered-things")


FORM = "profile"
# A refusal of the targets comes after the profile itself was created or updated (only its targets
# were not): the form comes back as the profile's edit form.
TARGETS = "targets"


def _behaviors(text: str) -> list[Any]:
    try:
        document = orjson.loads(text or "[]")
    except orjson.JSONDecodeError as error:
        raise Rejected(f"Behaviors are not valid JSON: {error}", field="behaviors") from None
    if isinstance(document, dict) and "behaviors" in document:
        document = document["behaviors"]
    if not isinstance(document, list):
        raise Rejected("Behaviors must be a JSON list of behaviors (as in create-security-profile)",
                       field="behaviors")
    return document


def _field_of(error: ApiError) -> str:
    """Which form field a refusal of Create/UpdateSecurityProfile concerns."""
    text = error.message.lower()
    if error.code == "VersionConflictException":
        return "version"
    if error.code == "ResourceAlreadyExistsException" or "securityprofilename" in text:
        return "name"
    if "alerttarget" in text or "rolearn" in text:
        return "alert"
    return "behaviors"


def routes(console: ConsoleContext) -> dict[str, Page]:
    api = console.api

    def target_choices() -> list[tuple[str, str]]:
        with console.engine.connect() as conn:
            groups = insights.group_names(conn)
        return [(console.arn(t), t) for t in FLEET_TARGETS] + [(console.arn(f"thinggroup/{g}"), f"group {g}")
                                                               for g in groups]

    def load(name: str) -> dict[str, Any]:
        described = api.invoke("DescribeSecurityProfile", {"securityProfileName": name})
        targets = api.invoke("ListTargetsForSecurityProfile", {"securityProfileName": name})
        sns = (described.get("alertTargets") or {}).get("SNS") or {}
        return {"name": name, "description": described.get("securityProfileDescription") or "",
                "behaviors": orjson.dumps(described.get("behaviors") or [], option=orjson.OPT_INDENT_2).decode(),
                "targets": [t["arn"] for t in targets["securityProfileTargets"]],
                "alert_topic": sns.get("alertTargetArn", ""), "alert_role": sns.get("roleArn", ""),
                "version": described.get("version")}

    def from_form(form: FormData, name: str | None) -> dict[str, Any]:
        return {"name": name if name is not None else str(form.get("name", "")).strip(),
                "description": str(form.get("description", "")), "behaviors": str(form.get("behaviors", "")),
                "targets": [str(t) for t in form.getlist("targets")],
                "alert_topic": str(form.get("alert_topic", "")).strip(),
                "alert_role": str(form.get("alert_role", "")).strip(),
                "version": int(str(form.get("version"))) if str(form.get("version", "")).isdigit() else None}

    def save(values: dict[str, Any], creating: bool) -> None:
        behaviors = _behaviors(values["behaviors"])
        params: dict[str, Any] = {"securityProfileName": values["name"], "behaviors": behaviors}
        if values["description"] or not creating:  # an emptied description is cleared, not kept
            params["securityProfileDescription"] = values["description"]
        if bool(values["alert_topic"]) != bool(values["alert_role"]):
            # AWS's answer would be a length constraint on the empty member ("Value '' at
            # 'alertTargets.SNS.roleArn' ... length greater than or equal to 20"): say what is missing.
            raise Rejected("An SNS alert target needs both ARNs: the topic's and the role's that may publish to it. "
                           "Fill in " + ("Role ARN" if values["alert_topic"] else "Topic ARN")
                           + ", or empty both for no alert target", field="alert")
        if values["alert_topic"] or values["alert_role"]:
            params["alertTargets"] = {"SNS": {"alertTargetArn": values["alert_topic"],
                                              "roleArn": values["alert_role"]}}
        try:
            if creating:
                api.invoke("CreateSecurityProfile", params)
            else:
                if values["version"] is not None:
                    params["expectedVersion"] = values["version"]
                if not values["alert_topic"] and not values["alert_role"]:
                    params["deleteAlertTargets"] = True
                if not behaviors:
                    params.pop("behaviors")
                    params["deleteBehaviors"] = True
                api.invoke("UpdateSecurityProfile", params)
        except ApiError as error:
            raise Rejected(f"{error.code}: {error.message}", status=error.status, field=_field_of(error)) from None
        listed = api.invoke("ListTargetsForSecurityProfile", {"securityProfileName": values["name"]})
        current = {t["arn"] for t in listed["securityProfileTargets"]}
        wanted = set(values["targets"])
        try:
            for arn in sorted(wanted - current):
                api.invoke("AttachSecurityProfile", {"securityProfileName": values["name"],
                                                     "securityProfileTargetArn": arn})
            for arn in sorted(current - wanted):
                api.invoke("DetachSecurityProfile", {"securityProfileName": values["name"],
                                                     "securityProfileTargetArn": arn})
        except ApiError as error:
            done = "created" if creating else "saved"
            raise Rejected(f"The profile was {done}, but not every target was changed: "
                           f"{error.code}: {error.message}", status=error.status, field=TARGETS) from None

    async def show(request: Request, values: dict[str, Any], creating: bool, refused: Refused | None = None
                   ) -> Response:
        """The form: ``values`` (a profile's, or the new profile's defaults), or after a refusal the
        form as typed (``refused``) with the reason by its field; ``values`` name the profile the
        form saves and the version it edits."""
        return console.render(request, "profile_edit.html", status_code=refused.status if refused else 200,
                              values=values, creating=creating, refused=refused, form=FORM,
                              choices=await run(console, target_choices))

    async def submit(request: Request, name: str | None) -> Response:
        """Save the posted form; on a refusal show it again as typed, with the reason by its field."""
        creating = name is None
        values = from_form(await request.form(), name)

        async def show_refused(refused: Refused) -> Response:
            if refused.field == TARGETS:  # sent again, the form must update the profile now, not create it anew
                saved = {**values, "version": (await run(console, load, values["name"]))["version"]}
                return await show(request, saved, False, refused)
            return await show(request, values, creating, refused)

        back = f"/console/profiles/{values['name']}" + ("?created=1" if creating else "?saved=1")
        return await perform(console, request, FORM, lambda: save(values, creating), back, show_refused)

    @login_required
    async def new_profile(request: Request) -> Response:
        if request.method == "POST":
            return await submit(request, None)
        values = {"name": "", "description": "", "behaviors": "[]", "targets": [console.arn("all/things")],
                  "alert_topic": "", "alert_role": "", "version": None}
        return await show(request, values, True)

    @login_required
    async def edit_profile(request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "POST":
            return await submit(request, name)
        try:
            values = await run(console, load, name)
        except ApiError as error:
            return refusal(console, request, "Security profile", error)
        return await show(request, values, False)

    @login_required
    async def delete_profile(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            await run(console, api.invoke, "DeleteSecurityProfile", {"securityProfileName": name})
        except ApiError as error:
            return refusal(console, request, "Security profile", error)
        return RedirectResponse("/console/profiles", status_code=303)

    return {"new_profile": new_profile, "edit_profile": edit_profile, "delete_profile": delete_profile}
