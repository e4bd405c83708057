"""The evidence dialog writes numbers as the event's sentence does: units, thousands separators,
and the digits that tell a value from the edge it crossed."""

from __future__ import annotations

from iotdefender.console.evidence import explain
from iotdefender.console.context import measured


def document(metric: str, value: float, evidence: dict, datapoints: list[float]) -> dict:
    evidence = dict(evidence, datapoints=[{"timestamp": 1.0 + i, "value": {"count": v}} for i, v in enumerate(datapoints)])
    return {"thingName": "d", "securityProfileName": "p", "violationId": "v",
            "behavior": {"name": "b", "metric": metric, "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}}},
            "events": [{"violationEventType": "in-alarm", "violationEventTime": 2.0, "metricValue": {"count": value},
                        "evidence": evidence}]}


def test_an_ml_events_value_and_band_carry_units_and_read_apart() -> None:
    ml = {"band": {"low": 1200.25, "high": 20111.6}, "confidenceLevel": "LOW", "judgedConfidenceLevel": "LOW",
          "modelVersion": 2, "explanation": "..."}
    (event,) = explain(document("aws:all-bytes-out", 20112, ml, [20112]))["events"]
    assert event["value"] == [("20,112 bytes", False)]
    assert (event["ml"]["low"], event["ml"]["high"]) == ("1,200.25 bytes", "20,111.6 bytes")
    assert event["datapoints"] == [(1.0, [("20,112 bytes", False)])]


def test_a_count_of_one_is_singular_and_a_threshold_has_its_unit() -> None:
    static = {"threshold": {"count": 0}}
    (event,) = explain(document("aws:num-messages-sent", 1, static, [1]))["events"]
    assert event["value"] == [("1 message", False)] and event["threshold"] == "0 messages"


def test_a_custom_metric_has_no_unit_and_lists_are_untouched() -> None:
    (event,) = explain(document("temperature", 36.2134, {"threshold": {"number": 36.2}}, []))["events"]
    assert event["value"] == [("36.21", False)] and event["threshold"] == "36.2"
    assert measured({"ports": [22, 443]}, "aws:listening-tcp-ports") == "22 443"
    assert measured({"count": 4096}, "aws:all-bytes-in") == "4,096 bytes"
    assert measured({"count": 1}, "aws:num-messages-sent|telemetry|IN") == "1 message"
