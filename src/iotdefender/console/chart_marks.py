"""What a device's metric charts draw over the data: each behavior's threshold as a line, the
periods its violations were in alarm as shaded bands, an ML behavior's learned normal band, and
the windows the device spent away (which ML Detect neither learns nor judges), so a chart shows
why a device alarmed, and why a 0 below the band did not.
"""

from __future__ import annotations

from typing import Any

from iotdefender.engine.ml import BehaviorModel, ConfidenceLevel
from iotdefender.engine.ml_behavior import ActiveModel, band
from iotdefender.engine.series import behavior_series as series_read
from iotdefender.metrics_catalog import is_cloud_side, series_key

Marks = dict[str, dict[str, list[Any]]]


def behavior_series(behavior: dict[str, Any]) -> str:
    """The chart a behavior's marks go on: the series it reads (a message size behavior whose
    normal is "at least X" reads each window's smallest message, in its own series)."""
    return series_read(behavior) or series_key(str(behavior.get("metric")))


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


# At most this many points of an ML band on one chart (the model's band is a line between the
# centres of the week's slots, half an hour each).
BAND_POINTS_MAX = 500


def model_band(active: ActiveModel, thing: str, level: ConfidenceLevel, start: float, end: float
               ) -> list[list[float]]:
    """[[time, low, high], ...]: the device's normal band at ``level`` at ``start``, at each slot
    centre inside the range (every few slots on a long range) and at ``end``; the model's band is
    a straight line between slot centres, so joining the points draws it exactly. A count's band
    is drawn as detection applies it (ml_behavior.band: edges rounded to whole counts)."""
    clock = active.model.clock
    slot = clock.slot_seconds
    step = slot * max(1, int((end - start) / slot / BAND_POINTS_MAX) + 1)
    first_centre = start - (start - clock.origin - slot / 2) % slot + slot
    times = [start, *_range(first_centre, end, step), end] if end > start else [start]
    return [[t, *band(active, thing, t, level)] for t in times]


def _range(first: float, end: float, step: float) -> list[float]:
    out, at = [], first
    while at < end:
        out.append(at)
        at += step
    return out


def add_model_bands(marks: Marks, models: list[tuple[str, dict[str, Any], BehaviorModel, int, float | None]],
                    thing: str, start: float, end: float) -> Marks:
    """Each ML behavior's band at its confidence level, on the chart of its series: ``models`` are
    (profile name, behavior, a model version, its number, when the next version replaced it or
    None for the one in force), as ``behavior_models.model_history_of`` lists them.

    Each version's band is drawn over the time it judged the datapoints: from when it was trained
    until the next version replaced it. Before it, another version (or none) judged them, and its
    band drawn there would make older alarms look like alarms on values inside the band. The entry
    says which version, when it was trained and until when, for the note under the chart."""
    for profile, behavior, model, version, until in models:
        level = ConfidenceLevel(((behavior.get("criteria") or {}).get("mlDetectionConfig") or {})
                                .get("confidenceLevel", "HIGH"))
        trained_at = model.summary().trained_at
        since, to = max(start, trained_at), end if until is None else min(end, until)
        entry = marks.setdefault(behavior_series(behavior), {"thresholds": [], "alarms": []})
        entry.setdefault("bands", []).append({
            "label": f"{profile}/{behavior['name']}", "level": level.value, "version": version,
            "trainedAt": trained_at, "until": until,
            "points": model_band(ActiveModel(behavior_series(behavior), version, model), thing, level, since, to)
            if since < to else []})
    return marks


def add_away_periods(marks: Marks, away: list[float], window_ends: dict[str, list[float]]) -> Marks:
    """On the chart of each cloud-side series with a learned band, the periods the device spent
    away: ``away`` are the ends of its windows marked ``iotdefender/away``, ``window_ends`` each
    chart's datapoint times. A window is as long as the shortest step between a chart's times (a
    cloud-side series has one datapoint a window); runs of adjacent windows are one period."""
    ends = sorted(away)
    for series, entry in marks.items():
        times = sorted(window_ends.get(series) or [])
        if not ends or not entry.get("bands") or not is_cloud_side(series) or len(times) < 2:
            continue
        window = min(b - a for a, b in zip(times, times[1:]) if b > a) if times[-1] > times[0] else None
        if window is None:
            continue
        periods: list[dict[str, float]] = []
        for end in ends:
            if periods and end - periods[-1]["end"] <= window * 1.5:
                periods[-1]["end"] = end
            else:
                periods.append({"start": end - window, "end": end})
        entry["away"] = periods
    return marks
