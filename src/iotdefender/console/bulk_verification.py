"""Verification states on active violations: one at a time (each row of the violations list) or
many at once (the operator's triage of a burst of alarms), one PutVerificationStateOnViolation per
violation, as the API would run them. A refusal shows the violations list again, as it was filtered,
with the form as typed and AWS's reason by it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from iotdefender.contract.errors import ApiError
from iotdefender.console.auth import Page, login_required, safe_next
from iotdefender.console.context import ConsoleContext
from iotdefender.console.writes import Refused, perform, refusal, run, text

MAX_VIOLATIONS = 100  # two pages of the violations list; more in one form is a mistake


def routes(console: ConsoleContext) -> dict[str, Page]:
    async def show(request: Request, refused: Refused) -> Response:
        """The violations list the form was on (its ``next``), with the refused form as typed."""
        back = urlsplit(safe_next(text(await request.form(), "next")))
        if back.path.rstrip("/") != "/console/violations":
            return refusal(console, request, "Verification state", refused)
        return await console.refused_pages["violations"](request, back.query, refused)

    def params_of(form: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"verificationState": str(form.get("state", ""))}
        if form.get("description"):
            params["verificationStateDescription"] = str(form["description"])
        return params

    @login_required
    async def set_verification(request: Request) -> Response:
        violation = request.path_params["violation_id"]
        params = {**params_of(await request.form()), "violationId": violation}
        return await perform(console, request, f"verify:{violation}", [("PutVerificationStateOnViolation", params)],
                             "/console/violations", lambda refused: show(request, refused))

    @login_required
    async def bulk_verify(request: Request) -> Response:
        form = await request.form()
        ids = list(dict.fromkeys(str(v) for v in form.getlist("violationId")))
        if not ids:
            return await show(request, Refused.of("bulk", form, reason="InvalidRequestException: choose at least "
                                                                       "one violation."))
        if len(ids) > MAX_VIOLATIONS:
            return await show(request, Refused.of("bulk", form, reason="InvalidRequestException: at most "
                                                                       f"{MAX_VIOLATIONS} violations at once."))
        params = params_of(form)

        def apply() -> list[str]:
            failures = []
            for violation in ids:
                try:
                    console.api.invoke("PutVerificationStateOnViolation", {**params, "violationId": violation})
                except ApiError as error:
                    failures.append(f"{violation}: {error.code}: {error.message}")
                    if error.code == "InvalidRequestException":  # the same refusal for every other one
                        break
            return failures

        failures = await run(console, apply)
        if failures:
            return await show(request, Refused.of("bulk", form, reason="Not every verification state was set:\n"
                                                                       + "\n".join(failures)))
        return RedirectResponse(safe_next(str(form.get("next", "")) or "/console/violations"), status_code=303)

    return {"set_verification": set_verification, "bulk_verify": bulk_verify}
