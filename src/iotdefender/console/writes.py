"""One way for the console's small forms to run an AWS operation and answer.

A form posts, the operation runs through ``ApiService.invoke`` (the API's own validation and
handlers), and the operator lands back on the page they came from, or on a page that says what
AWS would have said (its exception name and HTTP status), never a 500.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from iotdefender.contract.errors import ApiError
from iotdefender.console.auth import safe_next
from iotdefender.console.context import ConsoleContext


async def run(console: ConsoleContext, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Off the event loop, which also carries the broker's MQTT traffic."""
    return await anyio.to_thread.run_sync(lambda: function(*args, **kwargs), limiter=console.api._limiter)


def refusal(console: ConsoleContext, request: Request, title: str, error: ApiError) -> Response:
    return console.render(request, "message.html", status_code=error.status, title=title,
                          message=f"{error.code}: {error.message}")


async def perform(console: ConsoleContext, request: Request, title: str, calls: list[tuple[str, dict[str, Any]]],
                  back: str) -> Response:
    """Run the operations in order; on success go to ``back`` (or the form's ``next``)."""
    def invoke_all() -> None:
        for operation, params in calls:
            console.api.invoke(operation, params)

    try:
        await run(console, invoke_all)
    except ApiError as error:
        return refusal(console, request, title, error)
    form = await request.form()
    return RedirectResponse(safe_next(str(form.get("next", "")) or back), status_code=303)


def text(form: Any, name: str) -> str:
    return str(form.get(name, "")).strip()


def lines(value: str) -> list[str]:
    return [line.strip() for line in value.replace(",", "\n").splitlines() if line.strip()]
