"""A violation's evidence as an operator reads it: what the behavior alarms on, what the device
reported (the offending ports, addresses or values marked), the threshold, and every time in UTC.

The evidence document is the one ``/console/api/violations/{id}/evidence`` serves as JSON; this
module turns it into a short explanation rendered as an HTML fragment the page shows in a dialog.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from iotdefender.contract.errors import ApiError
from iotdefender.console.auth import Page, login_required
from iotdefender.console.context import ConsoleContext, metric_value
from iotdefender.console.wording import alarm_sentence
from iotdefender.console.writes import run
from iotdefender.english import numbers_apart, quantity
from iotdefender.metrics_catalog import METRIC_UNITS

LIST_MEMBERS = ("ports", "cidrs", "numbers", "strings")
EVENT_WORDS = {"in-alarm": "went into alarm", "alarm-cleared": "cleared", "alarm-invalidated": "was invalidated"}


def _scalar(value: Any) -> float | None:
    """The number of a count or number MetricValue (or of a bare number); None for lists."""
    if isinstance(value, dict):
        value = value.get("count", value.get("number"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def value_parts(value: Any, offending: list[Any], unit: str = "", edges: tuple[float, ...] = ()) -> list[tuple[str, bool]]:
    """(text, offending?) for each element of a reported value, in the order reported. A number is
    written with its unit, with the digits that tell it from the edges it is compared with."""
    if isinstance(value, dict):
        for member in LIST_MEMBERS:
            if isinstance(value.get(member), list):
                bad = set(map(str, offending))
                return [(str(v), str(v) in bad) for v in value[member]] or [("(empty)", False)]
    number = _scalar(value)
    if number is not None:
        return [(quantity(numbers_apart(number, *edges)[0], unit), bool(offending))]
    return [(metric_value(value), bool(offending))]


def _ml(evidence: dict[str, Any], value: float | None, unit: str) -> dict[str, Any] | None:
    """An ML behavior's evidence: the band of its confidence level for this device at that hour
    (in the metric's units, written as the event's sentence writes them), the level the value
    reached, the model's own sentence."""
    band = evidence.get("band")
    if not isinstance(band, dict):
        return None
    low_edge, high_edge = band.get("low"), band.get("high")
    if isinstance(low_edge, (int, float)) and isinstance(high_edge, (int, float)):
        written = numbers_apart(*([] if value is None else [value]), low_edge, high_edge)[-2:]
        low, high = (quantity(text, unit) for text in written)
    else:
        low = high = "-"
    return {"level": evidence.get("confidenceLevel"), "judged": evidence.get("judgedConfidenceLevel"),
            "low": low, "high": high,
            "explanation": evidence.get("explanation"), "version": evidence.get("modelVersion")}


def _edges(evidence: dict[str, Any]) -> tuple[float, ...]:
    """The numbers a value is compared with: the band's edges or the threshold."""
    band = evidence.get("band")
    found = [band.get("low"), band.get("high")] if isinstance(band, dict) else [_scalar(evidence.get("threshold"))]
    return tuple(float(e) for e in found if isinstance(e, (int, float)))


def explain(document: dict[str, Any]) -> dict[str, Any]:
    """The template's view of an evidence document: one entry per event, oldest first."""
    unit = METRIC_UNITS.get((document.get("behavior") or {}).get("metric") or "", "")
    events = []
    for event in document["events"]:
        evidence = event.get("evidence") or {}
        offending = evidence.get("offendingValues") or []
        threshold = evidence.get("threshold")
        statistic = evidence.get("statistic")
        value, edges = _scalar(event.get("metricValue")), _edges(evidence)
        shown_threshold = None
        if threshold is not None:
            scalar = _scalar(threshold)
            shown_threshold = (metric_value(threshold) if scalar is None else
                               quantity(numbers_apart(*([] if value is None else [value]), scalar)[-1], unit))
        events.append({
            "what": EVENT_WORDS.get(event["violationEventType"], event["violationEventType"]),
            "kind": event["violationEventType"], "time": event["violationEventTime"],
            "value": value_parts(event.get("metricValue"), offending, unit, edges),
            "offending": [str(v) for v in offending],
            "threshold": shown_threshold,
            "statistic": statistic, "devices": evidence.get("devices"),
            "ml": _ml(evidence, value, unit),
            "datapoints": [(d.get("timestamp"), value_parts(d.get("value"), offending, unit, edges))
                           for d in evidence.get("datapoints") or []],
        })
    return {"document": document, "sentence": alarm_sentence(document.get("behavior") or {}), "events": events}


def routes(console: ConsoleContext) -> dict[str, Page]:
    @login_required
    async def evidence_fragment(request: Request) -> Response:
        from iotdefender.controlplane.violations import violation_evidence

        try:
            document = await run(console, violation_evidence, console.api.context, request.path_params["violation_id"])
        except ApiError as error:
            return console.render(request, "_evidence.html", status_code=error.status, error=error)
        return console.render(request, "_evidence.html", error=None, **explain(document))

    return {"evidence_fragment": evidence_fragment}
