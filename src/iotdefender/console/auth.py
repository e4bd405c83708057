"""Console login: the same access keys as the API, a signed session cookie, CSRF tokens on writes.

No page, stream or JSON endpoint under /console is readable without a session (the static files
are the exception: a chart library and a stylesheet). The session cookie is signed with a secret
derived from the configured access keys (``CredentialStore.derive_secret``), is HttpOnly and
SameSite=Strict, and names a session the server can revoke (``sessions.SessionRegistry``: logout
ends it for good); every form and fetch that changes something also carries the session's CSRF
token. Failed logins are throttled (``throttle.LoginThrottle``) and logged, as is every write.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from iotdefender.console.context import ConsoleContext
from iotdefender.log_limits import LimitedLog

Page = Callable[[Request], Awaitable[Response]]
log = structlog.get_logger("iotdefender.console")
# Attempts refused by the throttle are not checked at all: a few lines and a summary per interval.
THROTTLED_LOG = LimitedLog(log, "console_login_throttled", None, level="warning")


def safe_next(target: str | None) -> str:
    """Only paths inside the console: a login link can never send the operator elsewhere."""
    if target and target.startswith("/console") and not target.startswith("//"):
        return target
    return "/console/"


def _has_control_characters(request: Request) -> bool:
    """NUL and other control characters have no use in a console URL, and PostgreSQL cannot even
    bind a NUL: refuse them before any page puts one in a query."""
    text = request.url.path + "".join(k + v for k, v in request.query_params.multi_items())
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "-"


def login_required(page: Page) -> Page:
    async def guarded(request: Request) -> Response:
        console: ConsoleContext = request.app.state.console
        if not request.session.get("user") or not await console.sessions.is_live(request.session.get("sid")):
            request.session.clear()
            if request.url.path.startswith("/console/api/") or request.headers.get("accept") == "text/event-stream":
                return Response('{"message": "log in first"}', status_code=401, media_type="application/json")
            wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/console/login?next={quote(wanted)}", status_code=303)
        if _has_control_characters(request):
            return Response("The address contains control characters.", status_code=400, media_type="text/plain")
        if request.method == "GET":
            return await page(request)
        token = request.headers.get("x-csrf-token")
        if token is None:
            form = await request.form()
            token = str(form.get("csrf", ""))
        if not secrets.compare_digest(token.encode(), str(request.session.get("csrf", "")).encode()):
            log.warning("console_write_refused", reason="csrf", user=request.session.get("user"),
                        path=request.url.path, address=client_address(request))
            return Response("The form expired or came from another site; reload the page.", status_code=403)
        response = await page(request)
        log.info("console_write", user=request.session.get("user"), method=request.method, path=request.url.path,
                 status=response.status_code, address=client_address(request))
        return response

    guarded.__name__ = page.__name__
    return guarded


def routes(console: ConsoleContext) -> dict[str, Page]:
    async def login_form(request: Request) -> Response:
        return console.render(request, "login.html", next=safe_next(request.query_params.get("next")), error=None)

    async def login(request: Request) -> Response:
        form = await request.form()
        key_id, secret = str(form.get("access_key_id", "")).strip(), str(form.get("secret_access_key", "")).strip()
        target = safe_next(str(form.get("next", "")))
        address = client_address(request)
        subjects = [f"address:{address}", f"key:{key_id}"]
        wait = console.throttle.retry_after(subjects)
        if wait is not None:
            THROTTLED_LOG("login", access_key_id=key_id, address=address, retry_after_s=wait)
            response = console.render(request, "login.html", status_code=429, next=target, access_key_id=key_id,
                                      error=f"Too many failed logins; try again in {wait} s.")
            response.headers["Retry-After"] = str(wait)
            return response
        if not console.api.credentials.check_secret(key_id, secret):
            console.throttle.failed(subjects)
            log.warning("console_login_failed", access_key_id=key_id, address=address)
            return console.render(request, "login.html", status_code=401, next=target, access_key_id=key_id,
                                  error="Unknown access key ID or wrong secret access key.")
        console.throttle.succeeded(subjects[0])
        await console.sessions.end(request.session.get("sid"))
        request.session.clear()
        request.session.update({"user": key_id, "csrf": secrets.token_urlsafe(24), "sid": await console.sessions.start()})
        log.info("console_login", access_key_id=key_id, address=address)
        return RedirectResponse(target, status_code=303)

    @login_required
    async def logout(request: Request) -> Response:
        await console.sessions.end(request.session.get("sid"))
        request.session.clear()
        return RedirectResponse("/console/login", status_code=303)

    return {"login_form": login_form, "login": login, "logout": logout}
