"""The devices list: every reporting device with its alarm state, searchable and sortable.

Counts and sorting are done by the database (``insights.devices_page``), so the page costs the
same for a hundred devices or a hundred thousand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from iotdefender.console.auth import Page, login_required
from iotdefender.console.context import ConsoleContext
from iotdefender.console.writes import run
from iotdefender.store import insights

PAGE_SIZE = 50
MAX_OFFSET = 1_000_000


def routes(console: ConsoleContext) -> dict[str, Page]:
    @login_required
    async def devices(request: Request) -> Response:
        q = request.query_params
        search = q.get("q", q.get("prefix", ""))[:128]
        sort = q.get("sort", "name")
        if sort not in insights.DEVICE_SORTS:
            return console.render(request, "message.html", status_code=400, title="Devices",
                                  message=f"Unknown sort {sort!r}: use one of {', '.join(insights.DEVICE_SORTS)}.")
        descending = q.get("order", "desc" if sort != "name" else "asc") == "desc"
        offset = int(q["offset"]) if q.get("offset", "").isdigit() and int(q["offset"]) <= MAX_OFFSET else 0

        def read() -> tuple[Sequence[Any], dict[str, int]]:
            with console.engine.connect() as conn:
                return insights.devices_page(conn, search, sort, descending, offset, PAGE_SIZE + 1)

        rows, counts = await run(console, read)
        return console.render(request, "things.html", rows=rows[:PAGE_SIZE], search=search, sort=sort,
                              descending=descending, offset=offset, counts=counts,
                              more=offset + PAGE_SIZE if len(rows) > PAGE_SIZE else None, page_size=PAGE_SIZE)

    return {"devices": devices}
