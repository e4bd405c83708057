"""One way for the console's forms to run AWS operations and answer.

A form posts, the operations run through ``ApiService.invoke`` (the API's own validation and
handlers), and the operator lands back on the page they came from; when the API refuses, the page
that holds the form is shown again (``show``) with that form as it was typed and AWS's reason by it
(its exception name, with the HTTP status), never a 500 and never a page that loses what was typed.
Templates read a refused form through the globals ``typed``, ``typed_list`` and ``refusal_for``
(``console.context``) and place its reason with the macro ``reason`` (``_refused.html``): by the
form, or by the field the refusal concerns (``Refused.field``) on a form that says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from iotdefender.contract.errors import ApiError
from iotdefender.console.auth import safe_next
from iotdefender.console.context import ConsoleContext


async def run(console: ConsoleContext, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Off the event loop, which also carries the broker's MQTT traffic."""
    return await anyio.to_thread.run_sync(lambda: function(*args, **kwargs), limiter=console.api._limiter)


def refusal(console: ConsoleContext, request: Request, title: str, error: ApiError | Refused) -> Response:
    """A page of its own that says what AWS said: for what no page can show again (a read, or a
    form whose page cannot be read)."""
    return console.render(request, "message.html", status_code=error.status, title=title,
                          message=error.reason if isinstance(error, Refused) else f"{error.code}: {error.message}")


@dataclass(frozen=True)
class Refused:
    """A form the API refused: which form of its page (``form``: a page can hold several), every
    value typed in it (a list each, as a field can be sent more than once: checkboxes, multiple
    selects), AWS's reason and the field it concerns (``field``; empty: the form as a whole)."""
    form: str
    typed: dict[str, list[str]]
    reason: str
    status: int
    field: str = ""

    @classmethod
    def of(cls, form: str, posted: FormData, error: ApiError | None = None, reason: str = "", status: int = 400,
           field: str = "") -> Refused:
        """``posted`` refused by ``error``, or by what the console checks before any operation
        (``reason``, ``status``)."""
        typed: dict[str, list[str]] = {}
        for key, value in posted.multi_items():
            if key != "csrf" and isinstance(value, str):
                typed.setdefault(key, []).append(value)
        if error is not None:
            reason, status = f"{error.code}: {error.message}", error.status
        return cls(form, typed, reason, status, field)


class Rejected(Exception):
    """A refusal the console words itself, raised by a form's ``calls``: what it checks before any
    operation, or AWS's refusal placed by the ``field`` it concerns."""

    def __init__(self, reason: str, status: int = 400, field: str = "") -> None:
        super().__init__(reason)
        self.reason, self.status, self.field = reason, status, field


Show = Callable[[Refused], Awaitable[Response]]
Calls = Sequence[tuple[str, dict[str, Any]]] | Callable[[], Any]


async def perform(console: ConsoleContext, request: Request, form: str, calls: Calls, back: str, show: Show
                  ) -> Response:
    """Run the operations in order (or the function ``calls``, which may raise ``Rejected``); on
    success go to ``back`` (or the form's ``next``), on a refusal answer ``show(Refused)``: the page
    again, the form as typed."""
    def invoke_all() -> None:
        if callable(calls):
            calls()
            return
        for operation, params in calls:
            console.api.invoke(operation, params)

    posted = await request.form()
    try:
        await run(console, invoke_all)
    except ApiError as error:
        return await show(Refused.of(form, posted, error))
    except Rejected as rejected:
        return await show(Refused.of(form, posted, reason=rejected.reason, status=rejected.status,
                                     field=rejected.field))
    return RedirectResponse(safe_next(str(posted.get("next", "")) or back), status_code=303)


def text(form: Any, name: str) -> str:
    return str(form.get(name, "")).strip()


def lines(value: str) -> list[str]:
    return [line.strip() for line in value.replace(",", "\n").splitlines() if line.strip()]
