"""Device certificates in the console: the fleet's list (/console/certificates), each one's status
buttons and the things it is attached to; and a device's certificates on its page.

The operator who reads a device's violations can cut the device off from there, as AWS IoT's
console does from a certificate's page: INACTIVE (reversible) or REVOKED (for good). It is the
API's UpdateCertificate, so the broker disconnects the device at once (docs/api-behaviour.md,
"Certificates"). The list also attaches a certificate to a thing and detaches it
(AttachThingPrincipal, DetachThingPrincipal): what the broker lets it connect as.

The list pages through ListCertificates (newest first, its marker); the common name, end of
validity and attached things of each page's certificates come from the store in two queries.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from iotdefender.console.auth import Page, login_required
from iotdefender.console.context import ConsoleContext
from iotdefender.console.writes import Refused, perform, refusal, run, text
from iotdefender.contract.errors import ApiError
from iotdefender.store import certificates, thing_principals

PAGE_SIZE = 50


def routes(console: ConsoleContext) -> dict[str, Page]:
    api = console.api

    async def listing(request: Request, refused: Refused | None = None) -> Response:
        """The page of ``?marker=``, or, for a refused form, the page the form came from (its ``next``)."""
        marker = request.query_params.get("marker") or None
        if refused is not None:
            came_from = urlsplit((refused.typed.get("next") or [""])[0])
            markers = parse_qs(came_from.query).get("marker") if came_from.path == "/console/certificates" else None
            marker = markers[0] if markers else None

        def read() -> dict[str, Any]:
            page = api.invoke("ListCertificates", {"pageSize": PAGE_SIZE, **({"marker": marker} if marker else {})})
            ids = [c["certificateId"] for c in page["certificates"]]
            with console.engine.connect() as conn:
                details = certificates.details(conn, ids)
                attached = thing_principals.things_of(conn, ids)
            rows = [{**c, **details.get(c["certificateId"], {}),
                     "things": attached.get(c["certificateId"], ("", ()))[1]} for c in page["certificates"]]
            return {"rows": rows, "next_marker": page.get("nextMarker")}

        try:
            found = await run(console, read)
        except ApiError as error:  # a marker that is not one ListCertificates gave
            return refusal(console, request, "Certificates", error)
        here = "/console/certificates" + (f"?{urlencode({'marker': marker})}" if marker else "")
        return console.render(request, "certificates.html", status_code=refused.status if refused else 200,
                              here=here, refused=refused, **found)

    @login_required
    async def certificates_page(request: Request) -> Response:
        return await listing(request)

    async def write(request: Request, certificate_id: str, calls: list[tuple[str, dict[str, Any]]]) -> Response:
        """Back to the page the form came from (its ``next``); refused: the list again, the form as typed."""
        return await perform(console, request, f"certificate:{certificate_id}", calls, "/console/certificates",
                             lambda refused: listing(request, refused))

    @login_required
    async def update_status(request: Request) -> Response:
        certificate_id = request.path_params["certificate_id"]
        form = await request.form()
        thing = text(form, "thing")
        calls = [("UpdateCertificate", {"certificateId": certificate_id, "newStatus": text(form, "newStatus")})]
        if text(form, "next").startswith("/console/certificates"):  # from the list: refused there, by the form
            return await write(request, certificate_id, calls)

        async def refused(error: Refused) -> Response:
            return refusal(console, request, "Certificate", error)

        return await perform(console, request, f"certificate:{certificate_id}", calls,
                             f"/console/things/{quote(thing, safe='')}" if thing else "/console/things", refused)

    @login_required
    async def attach(request: Request) -> Response:
        certificate_id = request.path_params["certificate_id"]
        form = await request.form()
        principal = api.context.arn(f"cert/{certificate_id}")
        return await write(request, certificate_id, [("AttachThingPrincipal", {
            "thingName": text(form, "thingName"), "principal": principal,
            "thingPrincipalType": "EXCLUSIVE_THING" if text(form, "exclusive") else "NON_EXCLUSIVE_THING"})])

    @login_required
    async def detach(request: Request) -> Response:
        certificate_id = request.path_params["certificate_id"]
        form = await request.form()
        return await write(request, certificate_id, [("DetachThingPrincipal", {
            "thingName": text(form, "thingName"), "principal": api.context.arn(f"cert/{certificate_id}")})])

    return {"update_status": update_status, "certificates": certificates_page, "attach": attach, "detach": detach}
