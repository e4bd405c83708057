"""Set one verification state on many active violations at once (the operator's triage of a
burst of alarms), one PutVerificationStateOnViolation per violation, as the API would run them.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from iotdefender.contract.errors import ApiError
from iotdefender.console.auth import Page, login_required, safe_next
from iotdefender.console.context import ConsoleContext
from iotdefender.console.writes import run

MAX_VIOLATIONS = 100  # two pages of the violations list; more in one form is a mistake


def routes(console: ConsoleContext) -> dict[str, Page]:
    def message(request: Request, status: int, text: str) -> Response:
        return console.render(request, "message.html", status_code=status, title="Verification state", message=text)

    @login_required
    async def bulk_verify(request: Request) -> Response:
        form = await request.form()
        ids = list(dict.fromkeys(str(v) for v in form.getlist("violationId")))
        if not ids:
            return message(request, 400, "InvalidRequestException: choose at least one violation.")
        if len(ids) > MAX_VIOLATIONS:
            return message(request, 400, f"InvalidRequestException: at most {MAX_VIOLATIONS} violations at once.")
        params: dict[str, Any] = {"verificationState": str(form.get("state", ""))}
        if form.get("description"):
            params["verificationStateDescription"] = str(form["description"])

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
            return message(request, 400, "Not every verification state was set:\n" + "\n".join(failures))
        return RedirectResponse(safe_next(str(form.get("next", "")) or "/console/violations"), status_code=303)

    return {"bulk_verify": bulk_verify}
