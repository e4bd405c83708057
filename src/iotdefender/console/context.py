"""What every console page needs: the API service (to run AWS operations), the monitoring view,
the templates, and the time settings that decide default ranges."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import pass_context
from jinja2.runtime import Context
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from iotdefender.english import count_of, quantity
from iotdefender.metrics_catalog import METRIC_UNITS
from iotdefender.alerts.routes import AlertRoutes
from iotdefender.api.app import ApiService
from iotdefender.console.sessions import SessionRegistry
from iotdefender.console.throttle import LoginThrottle
from iotdefender.pipeline.monitoring import MonitoringIndex

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


def when(epoch: Any) -> str:
    """UTC, to the second: the same instant for every operator whatever their browser's zone."""
    if epoch is None or epoch == "":
        return "-"
    if isinstance(epoch, datetime):
        moment = epoch.astimezone(timezone.utc)
    else:
        moment = datetime.fromtimestamp(float(epoch), timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: Any) -> str:
    """A span as an operator says it: 45 s, 12 min, 3 h 05 min, 2 d 4 h."""
    if seconds is None or seconds == "":
        return "-"
    s = max(0, int(float(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def metric_value(value: Any) -> str:
    """A MetricValue as an operator reads it: 5, 0.5, 22 80 443, 10.0.0.0/8."""
    if not isinstance(value, dict):
        return "-" if value is None else str(value)
    for key in ("count", "number"):
        if value.get(key) is not None:
            return str(value[key])
    for key in ("ports", "cidrs", "numbers", "strings"):
        if value.get(key) is not None:
            return " ".join(str(v) for v in value[key]) or "(empty)"
    return str(value)


def measured(value: Any, metric: str | None = None) -> str:
    """A reported MetricValue in a table, as the evidence writes it: 2,048 bytes, 1 message, 36.2;
    lists as ``metric_value`` writes them."""
    number = value.get("count", value.get("number")) if isinstance(value, dict) else value
    if isinstance(number, (int, float)) and not isinstance(number, bool):
        return quantity(number, METRIC_UNITS.get((metric or "").split("|", 1)[0], ""))
    return metric_value(value)


@pass_context
def refusal_for(context: Context, form: str) -> Any:
    """The page's refused form (``refused``, a ``writes.Refused``) when it is ``form``, else None."""
    refused = context.get("refused")
    return refused if refused is not None and refused.form == form else None


@pass_context
def typed(context: Context, form: str, field: str, default: Any = "") -> Any:
    """What was typed in ``field`` of the refused ``form`` (its last value), else ``default``."""
    refused = refusal_for(context, form)
    if refused is None:
        return default
    values = refused.typed.get(field)
    return values[-1] if values else ""


@pass_context
def typed_list(context: Context, form: str, field: str, default: Any = ()) -> list[str]:
    """Every value sent for ``field`` of the refused ``form`` (checkboxes, multiple selects), else
    ``default``."""
    refused = refusal_for(context, form)
    return list(default) if refused is None else list(refused.typed.get(field, []))


@dataclass
class ConsoleContext:
    api: ApiService
    monitoring: MonitoringIndex
    sessions: SessionRegistry
    time_scale: float = 1.0
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    # The page that holds a resource's forms shown again with a refused one, by the resource type
    # of its ARN (securityprofile, thinggroup): (request, name, writes.Refused) -> response. The
    # tags form is the same on every such page.
    refused_pages: dict[str, Callable[[Request, str, Any], Awaitable[Response]]] = field(default_factory=dict)
    # Where the profiles' SNS topics go (--sns-endpoint-url, --alert-subscriptions): a profile page
    # says so when its topic goes nowhere. None: the console does not know (tests of other parts).
    alert_routes: AlertRoutes | None = None

    def __post_init__(self) -> None:
        self.templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
        self.templates.env.filters["when"] = when
        self.templates.env.filters["metric_value"] = metric_value
        self.templates.env.filters["measured"] = measured
        self.templates.env.filters["duration"] = duration
        self.templates.env.filters["count_of"] = count_of
        self.templates.env.globals["time_scale"] = self.time_scale
        self.templates.env.globals.update(refusal_for=refusal_for, typed=typed, typed_list=typed_list)

    @property
    def engine(self) -> Any:
        return self.api.context.engine

    def arn(self, resource: str) -> str:
        return self.api.context.arn(resource)

    def render(self, request: Request, template: str, status_code: int = 200, **values: Any) -> Response:
        values.setdefault("page", template.removesuffix(".html"))
        values["csrf_token"] = request.session.get("csrf", "")
        values["user"] = request.session.get("user")
        return self.templates.TemplateResponse(request, template, values, status_code=status_code)
