"""HTTP requests of an api node on ``/metrics``: counted by AWS operation and status code, timed by operation.

An ASGI middleware around the whole app, so every answer is counted whoever gives it (the API's
catch-all, the console, the probes, Starlette's own 404/405). The label is never the raw path,
which a client chooses (unbounded series): it is the model's operation name, which ``ApiService``
names once routing found it (``name_operation``), one label per extension endpoint, ``console``
for every console page, ``healthz`` and ``metrics`` for the probes, and ``unknown`` for a request
answered before its operation was known (a bad signature, no such route). The time is until the
response's head is sent: a console event stream stays open for minutes, and its whole life is no
request latency.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

HTTP_REQUESTS = Counter("iotdefender_http_requests", "HTTP requests answered, by AWS operation and status code",
                        ["operation", "code"])
HTTP_SECONDS = Histogram("iotdefender_http_request_seconds",
                         "Seconds from a request's arrival to its response's head, by AWS operation", ["operation"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))

UNKNOWN = "unknown"
CLIENT_CLOSED = 499  # nginx's status for a request whose client left before it was answered


async def client_left(request: Request, error: Exception) -> Response:
    """A client that closed its connection before its body arrived (any route reading one: the API,
    the console's forms): nobody to answer and no defect of ours, so no 500 and no traceback, which
    anyone could cause by the thousand. Answered (to nobody) and counted as nginx's 499."""
    return Response(status_code=CLIENT_CLOSED)


#: For every Starlette app of the service (``exception_handlers=``): the API's and the console's.
EXCEPTION_HANDLERS = {ClientDisconnect: client_left}
_SCOPE_KEY = "iotdefender.operation"
# The extension endpoints (api/app.py, docs/api-behaviour.md), by the first segment after /_iotdefender/.
_EXTENSIONS = frozenset({"broker-events", "violations", "behavior-models", "alerts", "backtests"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Operation:
    """The request's label, named by whoever learns it (held in the scope: routing copies no scope,
    but a mutable holder survives any copy)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def path_label(path: str) -> str:
    """The label a path alone decides; ``unknown`` for the API's catch-all until it names the operation."""
    if path == "/console" or path.startswith("/console/"):
        return "console"
    if path in ("/healthz", "/metrics"):
        return path[1:]
    return UNKNOWN


def extension_label(raw_path: str) -> str:
    """``_iotdefender/<endpoint>`` for the extension endpoints that exist, else ``_iotdefender/unknown``."""
    segment = raw_path.split("/")[2] if raw_path.count("/") >= 2 else ""
    return f"_iotdefender/{segment if segment in _EXTENSIONS else UNKNOWN}"


def name_operation(scope: Scope, name: str) -> None:
    """The API's catch-all tells which operation the request is (a model name or ``extension_label``)."""
    holder = scope.get(_SCOPE_KEY)
    if holder is not None:
        holder.name = name


class HttpMetrics:
    """ASGI middleware: counts and times every HTTP request (module docstring)."""

    def __init__(self, app: Asgi) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        operation = _Operation(path_label(scope.get("path", "")))
        scope[_SCOPE_KEY] = operation
        answered = False

        async def counted(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                _observe(operation.name, message["status"], time.perf_counter() - started)
            await send(message)

        try:
            await self._app(scope, receive, counted)
        except Exception:
            if not answered:  # the server answers 500
                _observe(operation.name, 500, time.perf_counter() - started)
            raise


def _observe(operation: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(operation, str(status)).inc()
    HTTP_SECONDS.labels(operation).observe(seconds)
