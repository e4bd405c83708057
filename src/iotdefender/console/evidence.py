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

LIST_MEMBERS = ("ports", "cidrs", "numbers", "strings")
EVENT_WORDS = {"in-alarm": "went into alarm", "alarm-cleared": "cleared", "alarm-invalidated": "was invalidated"}


def value_parts(value: Any, offending: list[Any]) -> list[tuple[str, bool]]:
    """(text, offending?) for each element of a reported value, in the order reported."""
    if isinstance(value, dict):
        for member in LIST_MEMBERS:
            if isinstance(value.get(member), list):
                bad = set(map(str, offending))
                return [(str(v), str(v) in bad) for v in value[member]] or [("(empty)", False)]
    return [(metric_value(value), bool(offending))]


def readable(number: Any) -> str:
    """A band's edge in the metric's units, rounded as an operator reads it: 640, 12.5, 0.031."""
    if not isinstance(number, (int, float)):
        return "-"
    return f"{number:,.0f}" if abs(number) >= 100 else f"{number:.3g}"


def _ml(evidence: dict[str, Any]) -> dict[str, Any] | None:
    """An ML behavior's evidence: the band of its confidence level for this device at that hour
    (in the metric's units), the level the value reached, the model's own sentence."""
    band = evidence.get("band")
    if not isinstance(band, dict):
        return None
    return {"level": evidence.get("confidenceLevel"), "judged": evidence.get("judgedConfidenceLevel"),
            "low": readable(band.get("low")), "high": readable(band.get("high")),
            "explanation": evidence.get("explanation"), "version": evidence.get("modelVersion")}


def explain(document: dict[str, Any]) -> dict[str, Any]:
    """The template's view of an evidence document: one entry per event, oldest first."""
    events = []
    for event in document["events"]:
        evidence = event.get("evidence") or {}
        offending = evidence.get("offendingValues") or []
        threshold = evidence.get("threshold")
        statistic = evidence.get("statistic")
        events.append({
            "what": EVENT_WORDS.get(event["violationEventType"], event["violationEventType"]),
            "kind": event["violationEventType"], "time": event["violationEventTime"],
            "value": value_parts(event.get("metricValue"), offending),
            "offending": [str(v) for v in offending],
            "threshold": None if threshold is None else metric_value(threshold),
            "statistic": statistic, "devices": evidence.get("devices"),
            "ml": _ml(evidence),
            "datapoints": [(d.get("timestamp"), value_parts(d.get("value"), offending))
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
