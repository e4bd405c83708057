"""Live updates and the console's JSON endpoints.

``/console/api/events`` is a Server-Sent Events stream of new violation events. It follows the
violation_events table by id (one indexed query a second per open page) instead of hooking the
detector in memory, so it shows events written by any process sharing the database, and a page
that reconnects (EventSource does that by itself) resumes from the last id it saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from iotdefender.contract.errors import ApiError
from iotdefender.console.auth import Page, login_required
from iotdefender.console.context import ConsoleContext, measured
from iotdefender.store import insights

POLL_S = 1.0
HEARTBEAT_S = 15.0


def event_document(row: Any) -> dict[str, Any]:
    """One live event; ``metricText`` is its value as the pages' tables write it (units, separators),
    so the rows the stream adds read like the rows the page was served with."""
    behavior = row.behavior or {}
    return {"id": row.id, "violationId": row.violation_id, "violationEventType": row.event_type,
            "thingName": row.thing_name, "securityProfileName": row.profile_name,
            "behaviorName": behavior.get("name"), "metricValue": row.metric_value,
            "metricText": measured(row.metric_value, behavior.get("metric")), "violationEventTime": row.event_time}


def _error(error: ApiError) -> Response:
    return JSONResponse(error.body(), status_code=error.status)


def routes(console: ConsoleContext) -> dict[str, Page]:
    async def read(function: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(function, *args, limiter=console.api._limiter)

    def newer(after: int) -> Sequence[Any]:
        with console.engine.connect() as conn:
            return insights.recent_events(conn, after, 200)

    def newest_id() -> int:
        with console.engine.connect() as conn:
            return insights.last_event_id(conn)

    @login_required
    async def events(request: Request) -> Response:
        resume = request.headers.get("last-event-id") or request.query_params.get("after")
        after = int(resume) if resume and resume.isdigit() else await read(newest_id)

        async def stream() -> AsyncIterator[bytes]:
            nonlocal after
            yield b"retry: 2000\n\n"
            quiet = 0.0
            while not await request.is_disconnected():
                rows = await read(newer, after)
                for row in rows:
                    after = row.id
                    yield b"id: %d\nevent: violation\ndata: %s\n\n" % (row.id, orjson.dumps(event_document(row)))
                quiet = 0.0 if rows else quiet + POLL_S
                if quiet >= HEARTBEAT_S:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
                await asyncio.sleep(POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    @login_required
    async def start_backtest(request: Request) -> Response:
        try:
            spec = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError as error:
            return JSONResponse({"message": f"not JSON: {error}"}, status_code=400)
        try:
            job = await read(console.api.backtest_jobs().submit, spec)
        except ApiError as error:
            return _error(error)
        return JSONResponse(job.document())

    @login_required
    async def backtest_status(request: Request) -> Response:
        try:
            job = console.api.backtest_jobs().get(request.path_params["backtest_id"])
        except ApiError as error:
            return _error(error)
        return Response(orjson.dumps(job.document()), media_type="application/json")

    return {"events": events, "start_backtest": start_backtest, "backtest_status": backtest_status}
