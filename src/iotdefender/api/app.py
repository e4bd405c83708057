"""The ASGI application: ``/healthz`` and the AWS IoT REST API.

One catch-all endpoint does the wire work for every operation, in the order AWS does it:
authenticate (SigV4), route (from the model), parse and validate the input (from the model),
run the operation's handler, serialise its output (from the model). Every failure becomes an
AWS-shaped error; an unexpected exception is logged with its traceback and answered as
InternalFailureException, never as a bare 500 page.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.to_thread
import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from iotdefender.api import metrics_access
from iotdefender.api.credentials import CredentialStore
from iotdefender.api.extensions import BacktestJobs, Extensions
from iotdefender.api.http_metrics import EXCEPTION_HANDLERS, HttpMetrics, extension_label, name_operation
from iotdefender.contract.errors import ApiError, invalid_request
from iotdefender.api.protocol import parse_request, serialize_response
from iotdefender.api.routing import RouteNotFound, Router
from iotdefender.contract.service_model import service_model
from iotdefender.api.sigv4 import SignedRequest, verify
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.dispatch import Dispatcher
from iotdefender.controlplane.registry import IMPLEMENTED
from iotdefender.controlplane.behavior_models import behavior_model_document
from iotdefender.controlplane.violations import violation_evidence
from iotdefender.store.availability import DatabaseHealth, is_unavailable

log = structlog.get_logger("iotdefender.api")

MAX_BODY_BYTES = 4 * 1024 * 1024
EXTENSION_PREFIX = "/_iotdefender/"
API_WORKER_THREADS = 8


def _error_response(error: ApiError, request_id: str) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status,
        media_type="application/json",
        headers={"x-amzn-ErrorType": error.code, "x-amzn-RequestId": request_id},
    )


class ApiService:
    """Holds what the API needs per request; one instance per running service."""

    def __init__(self, context: ServiceContext, credentials: CredentialStore,
                 on_change: Sequence[Callable[[], None]] = (), extensions: Extensions = Extensions(),
                 health: DatabaseHealth | None = None,
                 on_write: Sequence[Callable[[str, dict[str, Any], dict[str, Any]], None]] = ()) -> None:
        self.context = context
        self.credentials = credentials
        self.router = Router(service_model())
        # Called after every successful write, so caches of the control plane stay exact.
        self.on_change = tuple(on_change)
        # Then with the operation and its input (the alert routes warn of a topic that goes nowhere).
        self.on_write = tuple(on_write)
        # The one dispatch path (validate -> run -> after-change) of the API and the console.
        self.dispatcher = Dispatcher(context, IMPLEMENTED, after_change=self._changed, after_write=self._written)
        self.dead_letters = extensions.dead_letters
        self.broker_events = extensions.broker_events
        self.backtests = extensions.backtests
        # Readiness (/healthz) and the one log line per database outage (shared with ingest).
        self.health = health if health is not None else DatabaseHealth.of(context.engine)
        # Handlers run in worker threads; more than a few at once only contend for the GIL and
        # the database (SQLite has a handful of WAL reader slots). Requests beyond wait here.
        self._limiter = anyio.CapacityLimiter(API_WORKER_THREADS)

    async def handle(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        started = time.perf_counter()
        began: float | None = None  # when the operation's database work began (``DatabaseHealth.failed``)
        operation_name = "-"
        try:
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                raise invalid_request(f"The request body is larger than {MAX_BODY_BYTES} bytes")
            raw_path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
            raw_path = raw_path.split("?", 1)[0]
            raw_query = request.scope.get("query_string", b"").decode("latin-1")
            headers = {k.decode("latin-1").lower(): header_text(v) for k, v in request.scope["headers"]}
            host_url = f"{request.url.scheme}://{headers.get('host', '')}"
            verify(
                SignedRequest(request.method, host_url, raw_path, raw_query, headers, body),
                self.credentials,
                self.context.region,
                datetime.now(timezone.utc),
            )
            if raw_path.startswith(EXTENSION_PREFIX):
                operation_name = raw_path
                name_operation(request.scope, extension_label(raw_path))
                output = await anyio.to_thread.run_sync(self._extension, request.method, raw_path, body,
                                                        limiter=self._limiter)
                response = Response(orjson.dumps(output), media_type="application/json",
                                    headers={"x-amzn-RequestId": request_id})
                return self._logged(response, request, operation_name, started, request_id)
            try:
                query_keys = {p.split("=", 1)[0] for p in raw_query.split("&") if p}
                match = self.router.match(request.method, raw_path, query_keys)
            except RouteNotFound as missing:
                raise ApiError("UnknownOperationException", f"No operation for {request.method} {raw_path} ({missing})")
            except UnicodeDecodeError:
                raise invalid_request("The request path is not valid UTF-8 percent-encoding") from None
            operation = match.operation
            operation_name = operation.name
            name_operation(request.scope, operation_name)
            implementation = self.dispatcher.implementation(operation_name)  # 501 before any input error
            params = parse_request(operation, match.path_params, raw_query, headers, body)
            extra = {"request_host": headers.get("host", "")} if implementation.takes_request_host else {}
            began = self.database_health().now()
            output = await anyio.to_thread.run_sync(functools.partial(self.dispatcher.call, operation, params, **extra),
                                                    limiter=self._limiter)
            status, out_headers, payload = serialize_response(operation, output)
            out_headers["x-amzn-RequestId"] = request_id
            response = Response(payload, status_code=status, media_type="application/json", headers=out_headers)
        except ApiError as error:
            response = _error_response(error, request_id)
        except ClientDisconnect:
            raise  # the client left before its body arrived: no defect (http_metrics.client_left, 499)
        except Exception as error:
            if is_unavailable(error):  # an outage, not a defect: 503 as AWS does, logged once per outage
                self.database_health().failed(error, began)
                return self._logged(_error_response(ApiError(
                    "ServiceUnavailableException", "The service's database is unavailable; retry later"),
                    request_id), request, operation_name, started, request_id)
            # a defect of ours: log it whole, answer as AWS does
            log.exception("internal_failure", operation=operation_name, request_id=request_id)
            response = _error_response(
                ApiError("InternalFailureException", "An internal failure occurred; see the service log"),
                request_id,
            )
        return self._logged(response, request, operation_name, started, request_id)

    def database_health(self) -> DatabaseHealth:
        return self.health

    def _logged(self, response: Response, request: Request, operation_name: str, started: float,
                request_id: str) -> Response:
        log.info(
            "api_request",
            operation=operation_name,
            method=request.method,
            status=response.status_code,
            error=response.headers.get("x-amzn-ErrorType"),
            ms=round((time.perf_counter() - started) * 1000, 2),
            request_id=request_id,
        )
        return response

    def _extension(self, method: str, raw_path: str, body: bytes) -> Any:
        """Signed endpoints beyond the AWS model (documented in docs/api-behaviour.md)."""
        parts = [unquote(p) for p in raw_path[len(EXTENSION_PREFIX):].split("/")]
        if method == "POST" and parts == ["broker-events"] and self.broker_events is not None:
            try:
                return self.broker_events(orjson.loads(body or b"{}"))
            except (orjson.JSONDecodeError, ValueError) as error:
                raise invalid_request(f"broker-events: {error}") from None
        if method == "GET" and len(parts) == 3 and parts[0] == "violations" and parts[2] == "evidence":
            return violation_evidence(self.context, parts[1])
        if method == "GET" and parts[0] == "behavior-models" and len(parts) in (3, 5) and \
                (len(parts) == 3 or parts[3] == "things"):
            return behavior_model_document(self.context, parts[1], parts[2], parts[4] if len(parts) == 5 else None)
        if method == "GET" and parts == ["alerts", "dead"] and self.dead_letters is not None:
            return {"deadLetters": self.dead_letters()}
        if parts[0] == "backtests" and self.backtests is not None:
            return self._backtests(self.backtests, method, parts[1:], body)
        raise ApiError("UnknownOperationException", f"No extension operation {method} {raw_path}")

    @staticmethod
    def _backtests(jobs: BacktestJobs, method: str, parts: list[str], body: bytes) -> Any:
        if method == "POST" and parts == []:
            try:
                spec = orjson.loads(body or b"{}")
            except orjson.JSONDecodeError as error:
                raise invalid_request(f"backtests: the body is not JSON ({error})") from None
            return jobs.submit(spec).document()
        if method == "GET" and parts == []:
            return {"backtests": [job.document(with_result=False) for job in jobs.list()]}
        if method == "GET" and len(parts) == 1:
            return jobs.get(parts[0]).document()
        raise ApiError("UnknownOperationException", f"No extension operation {method} backtests/{'/'.join(parts)}")

    def backtest_jobs(self) -> BacktestJobs:
        """The backtest jobs, or the one answer of a service assembled without them (tests of
        other parts): the console's backtests and its builder's preview both ask here."""
        if self.backtests is None:
            raise ApiError("UnknownOperationException", "Backtests are not enabled in this service")
        return self.backtests

    def invoke(self, operation_name: str, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Run an AWS operation from inside the service (the console): the same dispatch path as a
        request, so it is validated and followed by the after-change listeners exactly as one."""
        return self.dispatcher.call_by_name(operation_name, params, **extra)

    def _changed(self) -> None:
        for listener in self.on_change:
            listener()

    def _written(self, operation_name: str, params: dict[str, Any], output: dict[str, Any]) -> None:
        for listener in self.on_write:
            listener(operation_name, params, output)


def header_text(value: bytes) -> str:
    """A header's value as the client signed it: botocore sends a member bound to a header (the
    ``x-amzn-principal`` of AttachThingPrincipal) as UTF-8 and signs its text, so decoded as latin-1
    a non-ASCII value failed the signature (403 InvalidSignatureException) instead of being judged
    (400). Bytes that are not UTF-8 are taken as latin-1, as HTTP's older rule has it."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


#: Cluster mode's readiness beyond the database: None when ready, else what is not (for the probe's body).
Readiness = Callable[[], dict[str, Any] | None]


def operations_routes(health: DatabaseHealth, readiness: Readiness | None = None,
                      metrics_token: str | None = None) -> list[Route]:
    """``/healthz`` and ``/metrics``: what every node serves, with or without the API; with
    ``metrics_token``, ``/metrics`` only to its bearer (api/metrics_access.py)."""
    async def healthz(_: Request) -> Response:
        """Readiness: 503 while the database is unreachable (a probe, at most one a second), or
        while a cluster node does not hold what it should (``readiness``)."""
        if not await anyio.to_thread.run_sync(health.check):
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
        missing = readiness() if readiness is not None else None
        if missing is not None:
            return JSONResponse({"status": "unavailable", **missing}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        if not metrics_access.allowed(request, metrics_token):
            return PlainTextResponse("/metrics needs Authorization: Bearer <the --metrics-token-file token>\n",
                                     status_code=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]


def create_operations_app(health: DatabaseHealth, readiness: Readiness | None = None,
                          metrics_token: str | None = None) -> Starlette:
    """A cluster node without the ``api`` role: only the probes."""
    return Starlette(routes=operations_routes(health, readiness, metrics_token))


def create_app(service: ApiService, console: Starlette | None = None, readiness: Readiness | None = None,
               metrics_token: str | None = None) -> Starlette:
    async def to_console(_: Request) -> Response:
        return RedirectResponse("/console/", status_code=307)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
    console_routes = [Route("/console", to_console, methods=["GET"]), Mount("/console", console)] if console else []
    return Starlette(
        routes=[
            *operations_routes(service.database_health(), readiness, metrics_token),
            *console_routes,
            Route("/{path:path}", service.handle, methods=methods),
        ],
        middleware=[Middleware(HttpMetrics)],  # requests by operation and status (api/http_metrics.py)
        exception_handlers=EXCEPTION_HANDLERS,
    )
