"""Assemble the console: its routes, the session middleware, the static files."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.api.app import ApiService
from iotdefender.api.http_metrics import EXCEPTION_HANDLERS
from iotdefender.console import (auth, builder, bulk_verification, certificates, devices, evidence, forms, live, mitigation,
                                 pages, profile_detail, resources)
from iotdefender.console.context import STATIC_DIR, ConsoleContext
from iotdefender.console.security import SecurityHeaders
from iotdefender.console.sessions import SessionRegistry
from iotdefender.pipeline.monitoring import MonitoringIndex

SESSION_MAX_AGE_S = 12 * 3600


def create_console(api: ApiService, monitoring: MonitoringIndex, time_scale: float = 1.0,
                   alert_routes: AlertRoutes | None = None) -> Starlette:
    console = ConsoleContext(api, monitoring, SessionRegistry(api.context.engine, SESSION_MAX_AGE_S), time_scale,
                             alert_routes=alert_routes)
    a, p, f, lv = auth.routes(console), pages.routes(console), forms.routes(console), live.routes(console)
    d, r, dv = profile_detail.routes(console), resources.routes(console), devices.routes(console)
    ev, bv = evidence.routes(console), bulk_verification.routes(console)
    b, m, c = builder.routes(console), mitigation.routes(console), certificates.routes(console)

    app = Starlette(
        routes=[
            Route("/", p["overview"]),
            Route("/login", a["login_form"], methods=["GET"]),
            Route("/login", a["login"], methods=["POST"]),
            Route("/logout", a["logout"], methods=["POST"]),
            Route("/metrics", p["metrics"]),
            Route("/things", dv["devices"]),
            Route("/things/{name:path}", p["thing"]),
            Route("/certificates", c["certificates"]),
            Route("/certificates/{certificate_id}/status", c["update_status"], methods=["POST"]),
            Route("/certificates/{certificate_id}/attach", c["attach"], methods=["POST"]),
            Route("/certificates/{certificate_id}/detach", c["detach"], methods=["POST"]),
            Route("/profiles", p["profiles"]),
            Route("/profiles/new", f["new_profile"], methods=["GET", "POST"]),
            Route("/profiles/{name}/delete", f["delete_profile"], methods=["POST"]),
            Route("/profiles/{name}/detail", d["detail"]),
            Route("/profiles/{name}/retained", d["save_retained"], methods=["POST"]),
            Route("/tags", d["tag"], methods=["POST"]),
            Route("/custom-metrics", r["custom_metrics"], methods=["GET", "POST"]),
            Route("/custom-metrics/{name}/{action}", r["custom_metric_action"], methods=["POST"]),
            Route("/dimensions", r["dimensions"], methods=["GET", "POST"]),
            Route("/dimensions/{name}/{action}", r["dimension_action"], methods=["POST"]),
            Route("/thing-groups", r["thing_groups"], methods=["GET", "POST"]),
            Route("/thing-groups/{name}", r["thing_group"]),
            Route("/thing-groups/{name}/{action}", r["thing_group_action"], methods=["POST"]),
            Route("/profiles/{name}", f["edit_profile"], methods=["GET", "POST"]),
            Route("/violations", p["violations"]),
            Route("/violations/verification", bv["bulk_verify"], methods=["POST"]),
            Route("/violations/{violation_id}/verification", bv["set_verification"], methods=["POST"]),
            Route("/violations/{violation_id}/evidence", ev["evidence_fragment"]),
            Route("/mitigation", m["mitigation"], methods=["GET", "POST"]),
            Route("/mitigation/actions/{name}/delete", m["delete_action"], methods=["POST"]),
            Route("/mitigation/tasks", m["start_task"], methods=["POST"]),
            Route("/mitigation/tasks/{task_id}", m["task"]),
            Route("/mitigation/tasks/{task_id}/cancel", m["cancel_task"], methods=["POST"]),
            Route("/backtest", p["backtest"]),
            Route("/api/events", lv["events"]),
            Route("/api/violations/{violation_id}/evidence", p["evidence"]),
            Route("/api/backtests", lv["start_backtest"], methods=["POST"]),
            Route("/api/backtests/{backtest_id}", lv["backtest_status"]),
            Route("/api/builder/catalog", b["catalog"]),
            Route("/api/builder/validate", b["validate"], methods=["POST"]),
            Route("/api/builder/preview", b["preview"], methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static"),
        ],
        middleware=[Middleware(SecurityHeaders),
                    Middleware(SessionMiddleware, secret_key=api.credentials.derive_secret("console-session"),
                               session_cookie="iotdefender_console", max_age=SESSION_MAX_AGE_S,
                               same_site="strict", path="/console")],
        exception_handlers=EXCEPTION_HANDLERS,  # a client gone before its form arrived: 499, not 500
    )
    app.state.console = console  # for login_required, which guards the pages of every module
    return app
