"""AWS's behavior rules, checked without I/O: documented examples pass, each rule fails alone."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdefender.controlplane.behavior_rules import (dimension_names_used, metric_names_used,
                                                     validate_profile_behaviors)
from iotdefender.metrics_catalog import BUILTIN_METRICS, spec_for

CUSTOM = {"batteryPercentage": "number", "users": "string-list", "temps": "number-list", "peers": "ip-address-list"}
DIMENSIONS = {"TopicFilterForAuthMessages"}

# The examples of the AWS developer guide (reference §3.2): every one must be valid.
DOCUMENTED = [
    {"name": "Max Message Size", "metric": "aws:message-byte-size",
     "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 1024},
                  "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1}, "suppressAlerts": True},
    {"name": "Large Message Size", "metric": "aws:message-byte-size",
     "criteria": {"comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p90"},
                  "durationSeconds": 300, "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1}},
    {"name": "Message size ML behavior", "metric": "aws:message-byte-size",
     "criteria": {"consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1,
                  "mlDetectionConfig": {"confidenceLevel": "HIGH"}}},
    {"name": "Out bound message count", "metric": "aws:num-messages-sent",
     "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 50}, "durationSeconds": 300}},
    {"name": "Denied source IPs", "metric": "aws:source-ip-address",
     "criteria": {"comparisonOperator": "not-in-cidr-set", "value": {"cidrs": ["12.8.0.0/16", "15.102.16.0/24"]}}},
    {"name": "Listening TCP Ports", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443, 80]}}},
    {"name": "great-than-75", "metric": "batteryPercentage",
     "criteria": {"comparisonOperator": "greater-than", "value": {"number": 75},
                  "consecutiveDatapointsToAlarm": 5, "consecutiveDatapointsToClear": 1}},
    {"name": "CellularBandwidth", "metric": "aws:message-byte-size",
     "metricDimension": {"dimensionName": "TopicFilterForAuthMessages", "operator": "IN"},
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 128}}},
]


def problems(*behaviors, **kwargs):
    return validate_profile_behaviors(list(behaviors), CUSTOM, DIMENSIONS, **kwargs)


def test_documented_examples_are_valid():
    assert problems(*DOCUMENTED) == []


def test_catalogue_covers_every_aws_metric():
    assert len([m for m in BUILTIN_METRICS.values() if m.side == "cloud"]) == 8
    assert len([m for m in BUILTIN_METRICS.values() if m.side == "device"]) == 10
    assert len([m for m in BUILTIN_METRICS.values() if m.ml]) == 13  # "6 cloud-side and 7 device-side"
    assert spec_for("users", CUSTOM).value_member == "strings" and spec_for("nope", CUSTOM) is None


def rule(behavior_patch=None, criteria_patch=None, base=DOCUMENTED[3]):
    behavior = {**base, **(behavior_patch or {})}
    behavior["criteria"] = {k: v for k, v in {**base["criteria"], **(criteria_patch or {})}.items() if v is not None}
    return behavior


@pytest.mark.parametrize("behavior, fragment", [
    (rule(criteria_patch={"consecutiveDatapointsToAlarm": 100000}),
     "Behavior Out bound message count is malformed. consecutiveDatapointsToAlarm 100000 should be in range[1,10]"),
    (rule(criteria_patch={"consecutiveDatapointsToClear": 0}), "consecutiveDatapointsToClear 0 should be in range"),
    (rule(criteria_patch={"durationSeconds": 120}), "durationSeconds 120 must be one of"),
    (rule(criteria_patch={"comparisonOperator": "in-port-set"}), "in-port-set can't be used with metric"),
    (rule(criteria_patch={"value": {"number": 5}}), "exactly the member 'count'"),
    (rule(criteria_patch={"value": {"count": 5, "ports": [1]}}), "exactly the member 'count'"),
    (rule(criteria_patch={"value": {"count": -1}}), "non-negative"),
    (rule(criteria_patch={"value": None}), "value is required"),
    (rule(criteria_patch={"comparisonOperator": None}), "comparisonOperator is required"),
    (rule({"metric": "aws:not-a-metric"}), "aws:not-a-metric is not a Device Defender metric"),
    (rule({"metric": "undefinedCustom"}), "custom metric undefinedCustom does not exist"),
    (rule({"metric": None}), "metric is required"),
    (rule(base=DOCUMENTED[5], criteria_patch={"durationSeconds": 300}),
     "durationSeconds can't be used with metric aws:listening-tcp-ports"),
    (rule(base=DOCUMENTED[5], criteria_patch={"value": {"ports": [70000]}}), "should be in range[0,65535]"),
    (rule(base=DOCUMENTED[4], criteria_patch={"value": {"cidrs": ["999.1.1.1/8"]}}), "not an IPv4 or IPv6"),
    (rule(base=DOCUMENTED[5], criteria_patch={"statisticalThreshold": {"statistic": "p90"}, "value": None}),
     "statisticalThreshold can't be used with metric aws:listening-tcp-ports"),
    (rule(base=DOCUMENTED[1], criteria_patch={"statisticalThreshold": {"statistic": "p42"}}), "'p42' must be one of"),
    (rule(base=DOCUMENTED[1], criteria_patch={"value": {"count": 1}}), "value can't be used with statisticalThreshold"),
    (rule(base=DOCUMENTED[2], behavior_patch={"metric": "aws:listening-tcp-ports"}),
     "mlDetectionConfig can't be used with metric aws:listening-tcp-ports"),
    (rule(base=DOCUMENTED[2], criteria_patch={"mlDetectionConfig": {"confidenceLevel": "EXTREME"}}),
     "confidenceLevel must be LOW, MEDIUM or HIGH"),
    (rule(base=DOCUMENTED[2], criteria_patch={"comparisonOperator": "less-than"}),
     "comparisonOperator can't be used with mlDetectionConfig"),
    (rule(base=DOCUMENTED[6], behavior_patch={"metricDimension": {"dimensionName": "TopicFilterForAuthMessages"}}),
     "metricDimension can't be used with custom metrics"),
    (rule(base=DOCUMENTED[5], behavior_patch={"metricDimension": {"dimensionName": "TopicFilterForAuthMessages"}}),
     "metricDimension can't be used with metric aws:listening-tcp-ports"),
    (rule(behavior_patch={"metricDimension": {"dimensionName": "Missing"}}), "dimension Missing does not exist"),
    (rule(behavior_patch={"metricDimension": {"dimensionName": "TopicFilterForAuthMessages", "operator": "ANY"}}),
     "must be IN or NOT_IN"),
    (rule(base={"name": "ipml", "metric": "aws:source-ip-address", "criteria": {
        "comparisonOperator": "in-cidr-set", "statisticalThreshold": {"statistic": "p50"}}},
        behavior_patch={"metricDimension": {"dimensionName": "TopicFilterForAuthMessages"}}), "only available for static"),
    (rule(base={"name": "users", "metric": "users", "criteria": {"comparisonOperator": "in-set",
                                                                  "value": {"strings": ["a"]}}},
          criteria_patch={"durationSeconds": 300}), "durationSeconds can't be used with metric users (a custom metric of type string-list)"),
    (rule(base={"name": "users-ml", "metric": "users", "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}}}),
     "mlDetectionConfig can't be used with metric users (a custom metric of type string-list)"),
    (rule(base={"name": "temps", "metric": "temps", "criteria": {"comparisonOperator": "in-set",
                                                                  "value": {"numbers": [1, "x"]}}}),
     "numbers must all be finite"),
    (rule(base={"name": "peers", "metric": "peers", "criteria": {"comparisonOperator": "in-set",
                                                                  "value": {"cidrs": ["10.0.0.0/8"]}}}),
     "in-set can't be used with metric peers (a custom metric of type ip-address-list)"),
    (rule(base={"name": "battery", "metric": "batteryPercentage", "criteria": {
        "comparisonOperator": "less-than", "value": {"strings": ["1"]}}}),
     "exactly the member 'number' for metric batteryPercentage (a custom metric of type number)"),
])
def test_each_rule_names_the_behavior_and_the_problem(behavior, fragment):
    found = problems(behavior)
    assert found, f"expected a problem containing {fragment!r}"
    assert any(fragment in p for p in found), found
    assert all(p.startswith(f"Behavior {behavior['name']} is malformed. ") for p in found)


def test_profile_level_limits():
    assert "used more than once" in problems(DOCUMENTED[0], DOCUMENTED[0])[0]
    many = [{**DOCUMENTED[3], "name": f"b{i}"} for i in range(101)]
    assert any("at most 100 behaviors" in p for p in problems(*many))
    ports = [{**DOCUMENTED[5], "name": f"p{i}", "criteria": {"comparisonOperator": "in-port-set",
                                                              "value": {"ports": list(range(i * 100, i * 100 + 100))}}}
             for i in range(11)]
    assert any("1000 behavior metric value elements" in p for p in problems(*ports))
    assert problems(*ports[:10]) == []  # exactly 1000 is allowed


def test_metrics_to_retain():
    assert problems(additional_metrics_to_retain=["aws:num-disconnects", "batteryPercentage"]) == []
    assert "nope" in problems(additional_metrics_to_retain=["nope"])[0]
    ok = [{"metric": "aws:num-authorization-failures",
           "metricDimension": {"dimensionName": "TopicFilterForAuthMessages", "operator": "NOT_IN"}}]
    assert problems(additional_metrics_to_retain_v2=ok) == []
    bad = [{"metric": "batteryPercentage", "metricDimension": {"dimensionName": "TopicFilterForAuthMessages"}}]
    assert "can't be used with custom metrics" in problems(additional_metrics_to_retain_v2=bad)[0]


def test_used_names():
    assert metric_names_used(DOCUMENTED, ["aws:num-disconnects"], [{"metric": "users"}]) == {
        "aws:message-byte-size", "aws:num-messages-sent", "aws:source-ip-address", "aws:listening-tcp-ports",
        "batteryPercentage", "aws:num-disconnects", "users"}
    assert dimension_names_used(DOCUMENTED, [{"metric": "x", "metricDimension": {"dimensionName": "D2"}}]) == {
        "TopicFilterForAuthMessages", "D2"}


garbage = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                       lambda c: st.lists(c, max_size=3) | st.dictionaries(
                           st.sampled_from(["name", "metric", "criteria", "value", "count", "ports", "cidrs",
                                            "comparisonOperator", "durationSeconds", "metricDimension",
                                            "dimensionName", "statisticalThreshold", "mlDetectionConfig",
                                            "statistic", "operator", "x"]), c, max_size=5), max_leaves=15)


@settings(max_examples=300, deadline=None)
@given(st.lists(garbage, max_size=4), st.lists(garbage, max_size=2), st.lists(garbage, max_size=2))
def test_garbage_never_raises(behaviors, v1, v2):
    result = validate_profile_behaviors(behaviors, CUSTOM, DIMENSIONS, v1, v2)  # type: ignore[arg-type]
    assert isinstance(result, list) and all(isinstance(p, str) for p in result)
