"""The behavior builder's server side: what a behavior may say, whether it is valid, what it would do.

- ``GET /console/api/builder/catalog``: every metric a behavior can watch (built-in ones from
  ``metrics_catalog``, the custom metrics defined now), each with its unit, value type, valid
  operators and whether it allows a duration, a statistical threshold or a dimension; and the
  defined dimensions. The browser builds its form from this, so the rules are written once.
- ``POST /console/api/builder/validate``: the behaviors through ``ValidateSecurityProfileBehaviors``,
  run by ``ApiService.invoke`` exactly as an AWS client's request is, so inline errors are the API's.
- ``POST /console/api/builder/preview``: a backtest request document (as ``/console/api/backtests``
  takes) answered at once with how many devices each behavior would have alarmed
  (``backtest.preview``), for the builder to show as thresholds change.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from iotdefender.contract.errors import ApiError, invalid_request
from iotdefender.backtest.preview import BacktestPreview
from iotdefender.console.auth import Page, login_required
from iotdefender.console.context import ConsoleContext
from iotdefender.english import unit_words
from iotdefender.metrics_catalog import BUILTIN_METRICS, CUSTOM_METRIC_TYPES, METRIC_UNITS, MetricSpec

PAGE = 250


def metric_entry(name: str, spec: MetricSpec, unit: str | None, label: str | None = None) -> dict[str, Any]:
    """One metric as the builder offers it; ``unitWords`` are the unit's singular and plural as the
    server writes them (english.unit_words), so the builder's sentences say "1 port" as the
    evidence does, from one table."""
    one, other = unit_words(unit) if unit else (None, None)
    return {"name": name, "label": label or name, "side": spec.side, "unit": unit,
            "unitWords": {"one": one, "other": other} if unit else None, "valueType": spec.value_member,
            "operators": sorted(spec.operators), "duration": spec.duration, "statistical": spec.statistical,
            "ml": spec.ml, "dimension": spec.dimension}


def catalog(console: ConsoleContext) -> dict[str, Any]:
    """Built-in and custom metrics with their rules, and the dimensions a behavior may name."""
    api = console.api
    metrics = [metric_entry(name, spec, METRIC_UNITS.get(name)) for name, spec in BUILTIN_METRICS.items()]
    token = None
    while True:
        listed = api.invoke("ListCustomMetrics", {"maxResults": PAGE, **({"nextToken": token} if token else {})})
        for name in listed.get("metricNames") or []:
            described = api.invoke("DescribeCustomMetric", {"metricName": name})
            spec = CUSTOM_METRIC_TYPES.get(str(described.get("metricType")))
            if spec is not None:
                metrics.append(metric_entry(name, spec, None, described.get("displayName") or name))
        token = listed.get("nextToken")
        if not token:
            break
    dimensions: list[str] = []
    token = None
    while True:
        listed = api.invoke("ListDimensions", {"maxResults": PAGE, **({"nextToken": token} if token else {})})
        dimensions.extend(listed.get("dimensionNames") or [])
        token = listed.get("nextToken")
        if not token:
            break
    # ML Detect: offered for the metrics AWS allows it on (metrics_catalog), with a confidence level.
    return {"metrics": metrics, "dimensions": dimensions, "mlDetect": True}


def routes(console: ConsoleContext) -> dict[str, Page]:
    api = console.api
    previews = BacktestPreview(console.engine)
    preview_turn = anyio.CapacityLimiter(1)

    async def run(function: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(function, *args, limiter=api._limiter)

    async def body(request: Request) -> Any:
        try:
            return orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError as error:
            raise invalid_request(f"The request is not JSON: {error}") from None

    @login_required
    async def metric_catalog(request: Request) -> Response:
        return JSONResponse(await run(catalog, console))

    @login_required
    async def validate(request: Request) -> Response:
        """The API's verdict on the behaviors; a malformed document is one more validation error."""
        try:
            document = await body(request)
            behaviors = document.get("behaviors") if isinstance(document, dict) else None
            verdict = await run(api.invoke, "ValidateSecurityProfileBehaviors", {"behaviors": behaviors})
        except ApiError as error:
            verdict = {"valid": False, "validationErrors": [{"errorMessage": f"{error.code}: {error.message}"}]}
        return JSONResponse(verdict)

    def preview_of(spec: Any) -> dict[str, Any]:
        return previews.preview(api.backtest_jobs().resolve(spec))

    @login_required
    async def preview(request: Request) -> Response:
        """One preview at a time, waiting without holding a worker thread.

        The first preview of a range can take seconds (bench/README.md); the builder asks again
        after each edit and abandons the previous request. Waiting on the API's thread limiter
        here would let a quick typist hold every API worker, so previews queue on their own
        limiter, and one whose page has gone away is not computed at all.
        """
        try:
            spec = await body(request)
            async with preview_turn:
                if await request.is_disconnected():
                    return Response(status_code=204)
                result = await anyio.to_thread.run_sync(preview_of, spec)
        except ApiError as error:
            return JSONResponse(error.body(), status_code=error.status)
        return Response(orjson.dumps(result), media_type="application/json")

    return {"catalog": metric_catalog, "validate": validate, "preview": preview}
