"""What a device's metric charts draw over the data: each behavior's threshold as a line and the
periods its violations were in alarm as shaded bands, so a chart shows why a device alarmed.
"""

from __future__ import annotations

from typing import Any

from iotdefender.metrics_catalog import series_key

Marks = dict[str, dict[str, list[Any]]]


def behavior_series(behavior: dict[str, Any]) -> str:
    dimension = behavior.get("metricDimension") or {}
    return series_key(str(behavior.get("metric")), dimension.get("dimensionName"), dimension.get("operator"))


def _scalar(value: Any) -> float | None:
    if isinstance(value, dict):
        for key in ("count", "number"):
            if isinstance(value.get(key), (int, float)):
                return float(value[key])
    return None


def chart_marks(profiles: list[dict[str, Any]], events: list[dict[str, Any]], end: float) -> Marks:
    """{series: {"thresholds": [{label, value}], "alarms": [{label, start, end}]}} for one device.

    ``events`` are its violation events (ListViolationEvents, any order); a violation still in
    alarm is shaded up to ``end``.
    """
    marks: Marks = {}

    def entry(series: str) -> dict[str, list[Any]]:
        return marks.setdefault(series, {"thresholds": [], "alarms": []})

    for profile in profiles:
        for behavior in profile.get("behaviors") or []:
            threshold = _scalar((behavior.get("criteria") or {}).get("value"))
            if threshold is not None:
                entry(behavior_series(behavior))["thresholds"].append(
                    {"label": f"{profile['name']}/{behavior['name']}", "value": threshold})
    started: dict[str, dict[str, Any]] = {}
    for event in sorted(events, key=lambda e: e["violationEventTime"]):
        behavior = event.get("behavior") or {}
        violation = event["violationId"]
        if event["violationEventType"] == "in-alarm":
            started[violation] = {"label": f"{event['securityProfileName']}/{behavior.get('name')}",
                                  "start": event["violationEventTime"], "end": end,
                                  "series": behavior_series(behavior)}
        elif violation in started:
            started[violation]["end"] = event["violationEventTime"]
            period = started.pop(violation)
            entry(period.pop("series"))["alarms"].append(period)
    for period in started.values():
        entry(period.pop("series"))["alarms"].append(period)
    return marks
