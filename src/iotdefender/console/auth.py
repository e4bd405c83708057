"""Console login: the same access keys as the API, a signed session cookie, CSRF tokens on writes.

No page, stream or JSON endpoint under /console is readable without a session (the static files
are the exception: a chart library and a stylesheet). The session cookie is signed with a secret
derived from the configured access keys (``CredentialStore.derive_secret``), is HttpOnly and
SameSite=Strict; every form and fetch that changes something also carries the session's CSRF token.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from iotdefender.console.context import ConsoleContext

Page = Callable[[Request], Awaitable[Response]]


def safe_next(target: str | None) -> str:
    """Only paths inside the console: a login link can never send the operator elsewhere."""
    if target and target.startswith("/console") and not target.startswith("//"):
        return target
    return "/console/"


def login_required(page: Page) -> Page:
    async def guarded(request: Request) -> Response:
        if not request.session.get("user"):
            if request.url.path.startswith("/console/api/") or request.headers.get("accept") == "text/event-stream":
                return Response('{"message": "log in first"}', status_code=401, media_type="application/json")
            wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/console/login?next={quote(wanted)}", status_code=303)
        if request.method != "GET":
            token = request.headers.get("x-csrf-token")
            if token is None:
                form = await request.form()
                token = str(form.get("csrf", ""))
            if not secrets.compare_digest(token, request.session.get("csrf", "")):
                return Response("The form expired or came from another site; reload the page.", status_code=403)
        return await page(request)

    guarded.__name__ = page.__name__
    return guarded


def routes(console: ConsoleContext) -> dict[str, Page]:
    async def login_form(request: Request) -> Response:
        return console.render(request, "login.html", next=safe_next(request.query_params.get("next")), error=None)

    async def login(request: Request) -> Response:
        form = await request.form()
        key_id, secret = str(form.get("access_key_id", "")).strip(), str(form.get("secret_access_key", "")).strip()
        target = safe_next(str(form.get("next", "")))
        if not console.api.credentials.check_secret(key_id, secret):
            return console.render(request, "login.html", status_code=401, next=target,
                                  error="Unknown access key ID or wrong secret access key.")
        request.session.clear()
        request.session.update({"user": key_id, "csrf": secrets.token_urlsafe(24)})
        return RedirectResponse(target, status_code=303)

    @login_required
    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/console/login", status_code=303)

    return {"login_form": login_form, "login": login, "logout": logout}
