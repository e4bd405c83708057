"""The console's read pages: overview, fleet metrics, device, profiles, violations, backtest.

Every page reads through the AWS operations the API runs (ListActiveViolations,
DescribeSecurityProfile, ...) or through ``store.insights`` aggregates, on a worker thread: the
event loop also carries the MQTT client of the broker, and a page must never stall device traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from iotdefender.contract.errors import ApiError
from iotdefender.console import fleet
from iotdefender.console.auth import Page, login_required
from iotdefender.console.chart_marks import add_away_periods, add_model_bands, chart_marks
from iotdefender.controlplane.behavior_models import model_history_of
from iotdefender.console.context import ConsoleContext
from iotdefender.console.writes import Refused
from iotdefender.controlplane import hierarchy
from iotdefender.metrics_catalog import AWAY_SERIES, BUILTIN_METRICS
from iotdefender.store import certificates, history, insights, latest_values, metric_values, registry

T = TypeVar("T")
PAGE_SIZE = 50
# Datapoints a device's chart draws at most per series: two weeks of 5-minute reports (4,032).
CHART_POINTS = 5000
RANGES = {"1h": 3600.0, "6h": 6 * 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "14d": 14 * 86400.0}
VERIFICATION_STATES = ["UNKNOWN", "BENIGN_POSITIVE", "FALSE_POSITIVE", "TRUE_POSITIVE"]
CRITERIA_TYPES = ["STATIC", "STATISTICAL", "MACHINE_LEARNING"]


def span(console: ConsoleContext, request: Request | Mapping[str, str], default: str = "24h"
         ) -> tuple[str, float, float]:
    """The chosen range (1h .. 14d of AWS time, i.e. divided by --time-scale) ending now."""
    name = (request.query_params if isinstance(request, Request) else request).get("range", default)
    seconds = RANGES.get(name, RANGES[default]) / console.time_scale
    now = time.time()
    return (name if name in RANGES else default), now - seconds, now


def routes(console: ConsoleContext) -> dict[str, Page]:
    api = console.api

    async def sync(function: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(function, *args, limiter=api._limiter)

    @login_required
    async def overview(request: Request) -> Response:
        range_name, start, end = span(console, request)

        def read() -> dict[str, Any]:
            with console.engine.connect() as conn:
                return {"counts": insights.fleet_counts(conn, end - 2 * 300.0 / console.time_scale),
                        "by_behavior": insights.active_by_behavior(conn),
                        "rate": insights.event_rate(conn, start, end, 48),
                        "recent": insights.recent_events(conn, None, 15)}

        data = await sync(read)
        return console.render(request, "overview.html", range_name=range_name, ranges=list(RANGES),
                              rate_json=orjson.dumps(data["rate"]).decode(), **data)

    @login_required
    async def metrics(request: Request) -> Response:
        range_name, start, end = span(console, request, "1h")
        metric = request.query_params.get("metric", "")
        group = request.query_params.get("group", "")
        chosen = [t for t in request.query_params.get("things", "").replace(",", " ").split() if t][:10]

        def read() -> dict[str, Any]:
            with console.engine.connect() as conn:
                available = sorted((history.series_present(conn, start - 86400.0 / console.time_scale, end)
                                    | _recent_series(conn)) - {AWAY_SERIES})  # not a metric
                groups = insights.group_names(conn)
                out: dict[str, Any] = {"available": available, "groups": groups, "distribution": None, "series": {},
                                       "unretained": _numeric_metrics(set(available)), "error": None}
                if group and group not in groups:  # a stale link: say so rather than show an empty fleet
                    out["error"] = f"ResourceNotFoundException: Thing group {group} does not exist"
                elif metric == AWAY_SERIES:  # a typed URL: the windows a device spent away are no metric
                    out["error"] = (f"{metric} is not a metric: it marks the windows a device spent away, "
                                    "shaded on its cloud-side charts")
                elif metric:
                    names, values = latest_values.read_latest(conn, metric, start)
                    latest_values.mark_read(console.engine, metric, end)  # kept folded while read
                    if group:  # the group with its child groups, as a profile attached to it covers
                        parents = registry.all_group_parents(conn)
                        names, values = fleet.among(names, values, insights.members_of(
                            conn, [group, *hierarchy.descendants(group, parents)]))
                    out["distribution"] = fleet.distribution(names, values)
                    wanted = chosen or [e["thingName"] for e in out["distribution"]["highest"][:3]]
                    charts = {thing: _chart(conn, thing, metric, start, end)[0] for thing in wanted}
                    out["series"] = {thing: points for thing, points in charts.items() if points}
                    out["marks"] = _fleet_marks(metric, list(out["series"]), start, end)
                return out

        data = await sync(read)
        return console.render(request, "metrics.html", status_code=404 if data["error"] else 200,
                              range_name=range_name, ranges=list(RANGES), metric=metric,
                              group=group, chosen=" ".join(chosen), chart_json=orjson.dumps(
                                  {"distribution": data["distribution"], "series": data["series"],
                                   "marks": data.get("marks"), "span": [start, end]}).decode(),
                              **data)

    def _numeric_metrics(present: set[str]) -> list[str]:
        """Numeric metrics (built-in and custom) with no history yet: offered so an operator sees
        they exist, with the way to give them history (retain them on a profile)."""
        custom = [api.invoke("DescribeCustomMetric", {"metricName": n}) for n in
                  api.invoke("ListCustomMetrics", {"maxResults": 100})["metricNames"]]
        names = [m for m, spec in BUILTIN_METRICS.items() if spec.value_member == "count"]
        names += [c["metricName"] for c in custom if c["metricType"] == "number"]
        return sorted(set(names) - present)

    def _fleet_marks(metric: str, things: list[str], start: float, end: float) -> dict[str, Any]:
        """The thresholds on the metric of the profiles monitoring the plotted devices, and those
        devices' alarm periods."""
        profiles = list({p["name"]: p for thing in things for p in console.monitoring.profiles_for(thing)}.values())
        events = [e for thing in things for e in api.invoke("ListViolationEvents", {
            "thingName": thing, "startTime": start, "endTime": end + 1, "maxResults": 100})["violationEvents"]]
        return chart_marks(profiles, events, end).get(metric, {})

    def _chart(conn: Any, thing: str, key: str, start: float, end: float
               ) -> tuple[list[list[float]], tuple[float, Any] | None]:
        """A device's numeric datapoints of one series in the range, the newest ``CHART_POINTS``
        (oldest first), and its latest other datapoint (a list, a CIDR set: shown as text)."""
        points: list[list[float]] = []
        other = None
        for _, ts, value in metric_values.newest_page(conn, thing, key, start, end, CHART_POINTS):
            number = value.get("count", value.get("number")) if isinstance(value, dict) else None
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                points.append([ts, number])
            else:
                other = (ts, value)
        return points, other

    def _recent_series(conn: Any) -> set[str]:
        latest = next(iter(history.iter_reports(conn, time.time() - 900.0 / console.time_scale, time.time(),
                                                batch=200)), [])
        return {key for _, _, datapoints in latest for key, v in datapoints.items()
                if isinstance(v, dict) and ("count" in v or "number" in v)}

    @login_required
    async def thing(request: Request) -> Response:
        name = request.path_params["name"]
        range_name, start, end = span(console, request)

        def read() -> dict[str, Any]:
            profiles = console.monitoring.profiles_for(name)
            active = api.invoke("ListActiveViolations", {"thingName": name, "maxResults": 100})["activeViolations"]
            events = api.invoke("ListViolationEvents", {"thingName": name, "startTime": end - 30 * 86400.0 /
                                                        console.time_scale, "endTime": end + 1,
                                                        "maxResults": 100}, newest_first=True)["violationEvents"]
            series: dict[str, list[list[float]]] = {}
            other: dict[str, Any] = {}
            with console.engine.connect() as conn:
                last_report = insights.last_report_at(conn, name)
                held = certificates.of_thing(conn, name)
                for key in sorted(console.monitoring.retained_metrics(name) - {AWAY_SERIES}):  # not a metric
                    points, last_other = _chart(conn, name, key, start, end)
                    if points:
                        series[key] = points
                    if last_other is not None:
                        other[key] = last_other
            try:
                described = api.invoke("DescribeThing", {"thingName": name})
            except ApiError:
                described = None
            with console.engine.connect() as conn:
                models = model_history_of(conn, profiles, start, end)
            marks = add_model_bands(chart_marks(profiles, events, end), models, name, start, end)
            if any(entry.get("bands") for entry in marks.values()):
                with console.engine.connect() as conn:
                    away = [ts for _, ts, _ in metric_values.newest_page(conn, name, AWAY_SERIES, start, end,
                                                                         CHART_POINTS)]
                marks = add_away_periods(marks, away, {key: [p[0] for p in points] for key, points in series.items()})
            return {"profiles": profiles, "active": active, "events": events, "series": series, "marks": marks,
                    "other": other, "described": described, "targets": console.monitoring.targets_of(name),
                    "last_report": last_report, "certificates": held}

        try:
            data = await sync(read)
        except ApiError as error:  # a name no device can have (too long, ...): say so, do not fail
            return console.render(request, "message.html", status_code=error.status, title="Device",
                                  message=f"{error.code}: {error.message}")
        if data["described"] is None and data["last_report"] is None and not (data["active"] or data["events"]):
            return console.render(request, "message.html", status_code=404, title="Device",
                                  message=f"No device named {name!r}: it is not registered and never reported.")
        return console.render(request, "thing.html", name=name, range_name=range_name, ranges=list(RANGES),
                              series_json=orjson.dumps({"series": data["series"], "marks": data["marks"],
                                                        "span": [start, end]}).decode(),
                              now=end, **data)

    @login_required
    async def evidence(request: Request) -> Response:
        from iotdefender.controlplane.violations import violation_evidence

        try:
            document = await sync(violation_evidence, api.context, request.path_params["violation_id"])
        except ApiError as error:
            return Response(orjson.dumps(error.body()), status_code=error.status, media_type="application/json")
        return Response(orjson.dumps(document), media_type="application/json")

    @login_required
    async def profiles(request: Request) -> Response:
        def read() -> list[dict[str, Any]]:
            with console.engine.connect() as conn:
                counts = insights.active_by_profile(conn)
            listed = api.invoke("ListSecurityProfiles", {"maxResults": 250})["securityProfileIdentifiers"]
            out = []
            for item in listed:
                described = api.invoke("DescribeSecurityProfile", {"securityProfileName": item["name"]})
                targets = api.invoke("ListTargetsForSecurityProfile", {"securityProfileName": item["name"]})
                out.append({"name": item["name"], "description": described.get("securityProfileDescription"),
                            "behaviors": described.get("behaviors") or [],
                            "targets": [t["arn"] for t in targets["securityProfileTargets"]],
                            "active": counts.get(item["name"], 0), "version": described.get("version")})
            return out

        return console.render(request, "profiles.html", profiles=await sync(read))

    async def violations_page(request: Request, q: Mapping[str, str], refused: Refused | None = None) -> Response:
        """The violations list for the query ``q``; after a refused verification form, the same
        list with that form as typed and AWS's reason by it."""
        view = q.get("view", "active")
        if view not in ("active", "history"):
            return console.render(request, "message.html", status_code=400, title="Violations",
                                  message=f"Unknown view {view!r}: use active or history.")
        filters: dict[str, Any] = {"maxResults": PAGE_SIZE}
        for param, field in (("thing", "thingName"), ("profile", "securityProfileName"),
                             ("verification", "verificationState"), ("criteria", "behaviorCriteriaType")):
            if q.get(param):
                filters[field] = q[param]
        if q.get("token"):
            filters["nextToken"] = q["token"]
        behavior = q.get("behavior", "")
        range_name, start, end = span(console, q, "7d")

        def read() -> dict[str, Any]:
            by_behavior = {"behavior_name": behavior} if behavior else {}
            if view == "history":
                page = api.invoke("ListViolationEvents", {**filters, "startTime": start, "endTime": end + 1},
                                  newest_first=True, **by_behavior)
                rows = page["violationEvents"]
            else:
                page = api.invoke("ListActiveViolations", filters, newest_first=True, **by_behavior)
                rows = page["activeViolations"]
            names = [p["name"] for p in api.invoke("ListSecurityProfiles", {"maxResults": 250})
                     ["securityProfileIdentifiers"]]
            return {"rows": rows, "next_token": page.get("nextToken"), "profile_names": names}

        try:
            data = await sync(read)
            error = None
        except ApiError as failure:
            data, error = {"rows": [], "next_token": None, "profile_names": []}, failure.message
        args = {k: v for k, v in q.items() if k != "token"}
        return console.render(request, "violations.html", status_code=refused.status if refused else 200, view=view,
                              query=args, here="/console/violations?" + urlencode(list(q.items())),
                              behavior=behavior, now=time.time(), range_name=range_name, ranges=list(RANGES),
                              states=VERIFICATION_STATES, criteria_types=CRITERIA_TYPES, error=error,
                              refused=refused, **data)

    console.refused_pages["violations"] = lambda request, query, refused: violations_page(
        request, dict(parse_qsl(query)), refused)

    @login_required
    async def violations(request: Request) -> Response:
        return await violations_page(request, request.query_params)

    @login_required
    async def backtest(request: Request) -> Response:
        def read() -> list[dict[str, Any]]:
            listed = api.invoke("ListSecurityProfiles", {"maxResults": 250})["securityProfileIdentifiers"]
            return [api.invoke("DescribeSecurityProfile", {"securityProfileName": p["name"]}) for p in listed]

        described = await sync(read)
        chosen = request.query_params.get("profile", "")
        behaviors = next((p.get("behaviors") for p in described if p["securityProfileName"] == chosen), None)
        missing = bool(chosen) and not any(p["securityProfileName"] == chosen for p in described)
        return console.render(request, "backtest.html", status_code=404 if missing else 200,
                              profiles=[p["securityProfileName"] for p in described], chosen=chosen,
                              ranges=list(RANGES), error=(f"ResourceNotFoundException: Security profile {chosen} "
                                                          "does not exist") if missing else None,
                              behaviors_json=orjson.dumps(behaviors or [], option=orjson.OPT_INDENT_2).decode())

    return {"overview": overview, "metrics": metrics, "thing": thing, "evidence": evidence,
            "profiles": profiles, "violations": violations, "backtest": backtest}
