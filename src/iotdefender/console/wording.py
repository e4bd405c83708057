"""A behavior in one plain sentence that says when it alarms.

A Detect criterion describes *normal* behaviour: ``temperature less-than-equals 70`` means
"normal is at most 70", so the device is in alarm when the value goes *above* 70. Operators are
easy to read backwards, so every page that shows a behavior (the profile detail page, the behavior
builder) says it the other way round, in the operator's words, from this one function.
"""

from __future__ import annotations

from typing import Any

from iotdefender.console.context import metric_value, when
from iotdefender.engine.evaluator import DELTA_METRICS, MAX_METRICS
from iotdefender.metrics_catalog import AT_LEAST_OPERATORS

# The operator states what is normal; the phrase says what alarms.
ALARM_PHRASES = {
    "less-than": "is {v} or more",
    "less-than-equals": "is above {v}",
    "greater-than": "is {v} or less",
    "greater-than-equals": "is below {v}",
    "in-port-set": "includes a port outside {v}",
    "not-in-port-set": "includes any of the ports {v}",
    "in-cidr-set": "includes an address outside {v}",
    "not-in-cidr-set": "includes an address in {v}",
    "in-set": "includes a value outside {v}",
    "not-in-set": "includes any of {v}",
}


def metric_label(behavior: dict[str, Any]) -> str:
    """The metric as named in the behavior, with its dimension if it has one."""
    metric = str(behavior.get("metric") or "the metric")
    dimension = (behavior.get("metricDimension") or {}).get("dimensionName")
    if dimension:
        operator = (behavior.get("metricDimension") or {}).get("operator", "IN")
        metric += f" ({'not ' if operator == 'NOT_IN' else ''}in dimension {dimension})"
    return metric


def _datapoints(criteria: dict[str, Any]) -> str:
    alarm = criteria.get("consecutiveDatapointsToAlarm") or 1
    clear = criteria.get("consecutiveDatapointsToClear") or 1
    text = "" if alarm == 1 else f" for {alarm} consecutive datapoints"
    if clear != 1:
        text += f"; it clears after {clear} normal datapoints"
    return text


def _window(metric: str, seconds: Any, operator: str = "") -> str:
    """What durationSeconds does to the value judged (docs/detection.md): counts of bytes and
    packets are summed over it, the message size is its largest (its smallest for an "at least"
    behavior); any other metric is judged on its latest value (for a statistical behavior
    durationSeconds is the percentile's window)."""
    if not seconds:
        return ""
    if metric in DELTA_METRICS:
        return f" summed over {seconds} s"
    if metric in MAX_METRICS:
        return f" (the {'smallest' if operator in AT_LEAST_OPERATORS else 'largest'} in {seconds} s)"
    return ""


def alarm_sentence(behavior: dict[str, Any]) -> str:
    """"alarms when temperature is above 70 for 2 consecutive datapoints", and the like."""
    criteria = behavior.get("criteria")
    metric = metric_label(behavior)
    if not criteria:
        return f"retains {metric} without alarming (no criteria)"
    seconds = criteria.get("durationSeconds")
    operator = criteria.get("comparisonOperator", "")
    over = _window(behavior.get("metric", ""), seconds, operator)
    statistical = criteria.get("statisticalThreshold") or {}
    if criteria.get("mlDetectionConfig") is not None:
        level = (criteria.get("mlDetectionConfig") or {}).get("confidenceLevel", "?")
        sentence = f"alarms when the ML model finds {metric} anomalous with {level} confidence"
    elif statistical.get("statistic"):
        threshold = f"the fleet's {statistical['statistic']}" + (f" of the previous {seconds} s" if seconds else "")
        sentence = f"alarms when {metric}{over} " + ALARM_PHRASES.get(operator, f"breaks {operator} {{v}}").format(
            v=threshold)
    else:
        value = metric_value(criteria.get("value"))
        phrase = ALARM_PHRASES.get(operator, f"is not {operator} {{v}}")
        sentence = f"alarms when {metric}{over} " + phrase.format(v=value)
    sentence += _datapoints(criteria)
    if behavior.get("suppressAlerts"):
        sentence += " (alerts suppressed)"
    return sentence


def model_status(summary: dict[str, Any] | None) -> str:
    """An ML behavior's model as GetBehaviorModelTrainingSummaries reports it, in words."""
    if summary is None:
        return "no model yet"
    status = summary.get("modelStatus")
    started = summary.get("trainingDataCollectionStartDate")
    refreshed = summary.get("lastModelRefreshDate")
    if status == "ACTIVE":
        return f"learned; the model was last rebuilt {when(refreshed)} UTC"
    if status == "EXPIRED":
        return (f"expired: not rebuilt since {when(refreshed)} UTC (too few datapoints), so it no longer alarms")
    collected = f"{summary.get('datapointsCollectionPercentage', 0.0):g} % collected"
    return f"learning: {collected}" + (f" since {when(started)} UTC" if started is not None else "") + "; it alarms once built"
