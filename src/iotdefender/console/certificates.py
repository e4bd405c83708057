"""A device's certificates on its page, and the form that changes one's status.

The operator who reads a device's violations can cut the device off from there, as AWS IoT's
console does from a certificate's page: INACTIVE (reversible) or REVOKED (for good). It is the
API's UpdateCertificate, so the broker disconnects the device at once (docs/api-behaviour.md,
"Certificates").
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from iotdefender.console.auth import Page, login_required
from iotdefender.console.context import ConsoleContext
from iotdefender.console.writes import Refused, perform, refusal, text


def routes(console: ConsoleContext) -> dict[str, Page]:
    @login_required
    async def update_status(request: Request) -> Response:
        certificate_id = request.path_params["certificate_id"]
        form = await request.form()
        thing = text(form, "thing")

        async def refused(error: Refused) -> Response:
            return refusal(console, request, "Certificate", error)

        return await perform(console, request, f"certificate:{certificate_id}",
                             [("UpdateCertificate", {"certificateId": certificate_id,
                                                     "newStatus": text(form, "newStatus")})],
                             f"/console/things/{quote(thing, safe='')}" if thing else "/console/things", refused)

    return {"update_status": update_status}
