"""Thresholds and alarm periods drawn on a device's charts come from its profiles and events."""

from __future__ import annotations

from iotdefender.console.chart_marks import chart_marks

PROFILE = {"name": "p", "behaviors": [
    {"name": "hot", "metric": "temperature", "criteria": {"comparisonOperator": "less-than", "value": {"number": 70}}},
    {"name": "ports", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}},
    {"name": "msgs", "metric": "aws:num-messages-sent", "metricDimension": {"dimensionName": "t"},
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}},
]}


def event(kind: str, at: float, violation: str = "v1", behavior: str = "hot") -> dict:
    return {"violationId": violation, "violationEventType": kind, "violationEventTime": at,
            "securityProfileName": "p", "behavior": next(b for b in PROFILE["behaviors"] if b["name"] == behavior)}


def test_numeric_thresholds_and_closed_and_open_alarm_periods():
    events = [event("alarm-cleared", 20.0), event("in-alarm", 10.0), event("in-alarm", 30.0, "v2")]
    marks = chart_marks([PROFILE], events, end=50.0)
    assert marks["temperature"]["thresholds"] == [{"label": "p/hot", "value": 70.0}]
    assert marks["temperature"]["alarms"] == [{"label": "p/hot", "start": 10.0, "end": 20.0},
                                              {"label": "p/hot", "start": 30.0, "end": 50.0}]
    assert marks["aws:num-messages-sent|t|IN"]["thresholds"] == [{"label": "p/msgs", "value": 5.0}]
    assert "aws:listening-tcp-ports" not in marks  # a set of ports has no line to draw
