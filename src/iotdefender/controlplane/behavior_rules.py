"""AWS's rules for behaviors, checked before a profile is stored (pure, no I/O).

botocore checks types and minimums; the API layer adds the model's max/pattern/enum. What remains
is what the service itself knows: which operator, value member, duration, statistic, ML setting
and dimension each metric allows (``metrics_catalog``), that referenced custom metrics and
dimensions exist, unique names and the profile quotas (reference §1.6, §1.7, §3.1, §7).
Messages take AWS's form: ``Behavior <name> is malformed. <rule>``.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from iotdefender.metrics_catalog import CONFIDENCE_LEVELS, DURATION_SECONDS, STATISTICS, MetricSpec, spec_for

MAX_BEHAVIORS = 100
MAX_VALUE_ELEMENTS = 1000  # "Behavior metric value elements per security profile: 1000"
_VALUE_MEMBERS = ("count", "cidrs", "ports", "number", "numbers", "strings")


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _value_problems(spec: MetricSpec, value: Mapping[str, Any], what: str) -> list[str]:
    """What is wrong with a criteria's value for the metric, named ``what`` as the user wrote it."""
    given = [m for m in _VALUE_MEMBERS if value.get(m) is not None]
    if given != [spec.value_member]:
        return [f"value must carry exactly the member '{spec.value_member}' for metric {what}"
                f" (got {', '.join(given) or 'none'})"]
    content = value[spec.value_member]
    problems: list[str] = []
    if spec.value_member == "count":
        if not isinstance(content, int) or isinstance(content, bool) or content < 0:
            problems.append(f"value count {content!r} must be a non-negative integer")
    elif spec.value_member == "number":
        if not isinstance(content, (int, float)) or isinstance(content, bool) or not math.isfinite(content):
            problems.append(f"value number {content!r} must be a finite number")
    elif not isinstance(content, list):
        problems.append(f"value {spec.value_member} must be a list")
    elif spec.value_member == "ports":
        bad = [p for p in content if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= 65535]
        if bad:
            problems.append(f"ports {bad} should be in range[0,65535]")
    elif spec.value_member == "cidrs":
        for cidr in content:
            try:
                ipaddress.ip_network(str(cidr).strip(), strict=False)
            except ValueError:
                problems.append(f"cidr {cidr!r} is not an IPv4 or IPv6 address or network")
    elif spec.value_member == "numbers":
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and math.isfinite(n) for n in content):
            problems.append("numbers must all be finite numbers")
    elif spec.value_member == "strings":
        if not all(isinstance(s, str) for s in content):
            problems.append("strings must all be strings")
    return problems


def _dimension_problems(spec: MetricSpec | None, dimension: Any, dimension_names: Collection[str],
                        ml_or_statistical: bool) -> list[str]:
    if dimension is None:
        return []
    dimension = _as_dict(dimension)
    name = dimension.get("dimensionName")
    problems = []
    if spec is not None and spec.side == "custom":
        problems.append("metricDimension can't be used with custom metrics")
    elif spec is not None and not spec.dimension:
        problems.append(f"metricDimension can't be used with metric {spec.name}")
    elif spec is not None and spec.name == "aws:source-ip-address" and ml_or_statistical:
        problems.append("metricDimension on aws:source-ip-address is only available for static (Rules Detect) behaviors")
    if not isinstance(name, str) or name not in dimension_names:
        problems.append(f"dimension {name} does not exist")
    if dimension.get("operator") not in (None, "IN", "NOT_IN"):
        problems.append(f"dimension operator {dimension.get('operator')!r} must be IN or NOT_IN")
    return problems


def _criteria_problems(spec: MetricSpec, criteria: Mapping[str, Any], metric: str) -> list[str]:
    """What is wrong with the criteria for this metric; messages name the behavior's metric (for a
    custom metric its name and its type, e.g. "firmware (a custom metric of type string-list)"), which is
    what the user wrote, not the type only."""
    problems: list[str] = []
    what = metric if metric == spec.name else f"{metric} (a custom metric of type {spec.name})"
    for member in ("consecutiveDatapointsToAlarm", "consecutiveDatapointsToClear"):
        count = criteria.get(member)
        if count is not None and (not isinstance(count, int) or not 1 <= count <= 10):
            problems.append(f"{member} {count} should be in range[1,10]")
    ml = criteria.get("mlDetectionConfig")
    statistical = criteria.get("statisticalThreshold")
    operator = criteria.get("comparisonOperator")
    value = criteria.get("value")
    duration = criteria.get("durationSeconds")
    if ml is not None:
        if not spec.ml:
            problems.append(f"mlDetectionConfig can't be used with metric {what}")
        if _as_dict(ml).get("confidenceLevel") not in CONFIDENCE_LEVELS:
            problems.append("mlDetectionConfig.confidenceLevel must be LOW, MEDIUM or HIGH")
        for member in ("comparisonOperator", "value", "durationSeconds", "statisticalThreshold"):
            if criteria.get(member) is not None:
                problems.append(f"{member} can't be used with mlDetectionConfig")
        return problems
    if operator is None:
        problems.append("comparisonOperator is required (or mlDetectionConfig)")
    elif operator not in spec.operators:
        problems.append(f"comparisonOperator {operator} can't be used with metric {what}; "
                        f"use {', '.join(sorted(spec.operators))}")
    if statistical is not None:
        if not spec.statistical:
            problems.append(f"statisticalThreshold can't be used with metric {what}")
        statistic = _as_dict(statistical).get("statistic")
        if statistic not in STATISTICS:
            problems.append(f"statisticalThreshold.statistic {statistic!r} must be one of {', '.join(sorted(STATISTICS))}")
        if value is not None:
            problems.append("value can't be used with statisticalThreshold")
    elif value is None:
        problems.append("value is required (or statisticalThreshold or mlDetectionConfig)")
    else:
        problems += _value_problems(spec, _as_dict(value), what)
    if duration is not None:
        if not spec.duration:
            problems.append(f"durationSeconds can't be used with metric {what}")
        elif duration not in DURATION_SECONDS:
            problems.append(f"durationSeconds {duration} must be one of 300, 600, 900, 1800, 3600")
    return problems


def _element_count(behavior: Mapping[str, Any]) -> int:
    value = _as_dict(_as_dict(behavior.get("criteria")).get("value"))
    total = 0
    for member in _VALUE_MEMBERS:
        content = value.get(member)
        if isinstance(content, list):
            total += len(content)
        elif content is not None:
            total += 1
    return total


def validate_profile_behaviors(
    behaviors: Sequence[Mapping[str, Any]],
    custom_metric_types: Mapping[str, str],
    dimension_names: Collection[str],
    additional_metrics_to_retain: Sequence[str] = (),
    additional_metrics_to_retain_v2: Sequence[Mapping[str, Any]] = (),
) -> list[str]:
    """Return one human message per problem (empty list = valid)."""
    problems: list[str] = []
    behaviors = [_as_dict(b) for b in (behaviors or [])]
    if len(behaviors) > MAX_BEHAVIORS:
        problems.append(f"A security profile can have at most {MAX_BEHAVIORS} behaviors, got {len(behaviors)}")
    seen: set[Any] = set()
    for behavior in behaviors:
        name = behavior.get("name")
        own: list[str] = []
        key = name if isinstance(name, str) else repr(name)
        if key in seen:
            own.append(f"behavior name {name} is used more than once in the profile")
        seen.add(key)
        metric = behavior.get("metric")
        criteria = behavior.get("criteria")
        spec = spec_for(metric, custom_metric_types) if isinstance(metric, str) else None
        if metric is None:
            own.append("metric is required")
        elif spec is None:
            own.append(f"metric {metric} is not a Device Defender metric" if str(metric).startswith("aws:")
                       else f"custom metric {metric} does not exist")
        if criteria is None:
            own.append("criteria is required")
        elif spec is not None:
            own += _criteria_problems(spec, _as_dict(criteria), str(metric))
        crit = _as_dict(criteria)
        own += _dimension_problems(spec, behavior.get("metricDimension"), dimension_names,
                                   bool(crit.get("mlDetectionConfig") or crit.get("statisticalThreshold")))
        problems += [f"Behavior {name} is malformed. {p}" for p in own]
    elements = sum(_element_count(b) for b in behaviors)
    if elements > MAX_VALUE_ELEMENTS:
        problems.append(f"A security profile can have at most {MAX_VALUE_ELEMENTS} behavior metric value "
                        f"elements (counts, ports, addresses, numbers, strings), got {elements}")
    for metric in additional_metrics_to_retain or []:
        if spec_for(metric, custom_metric_types) is None:
            problems.append(f"additionalMetricsToRetain: metric {metric} is not a Device Defender metric "
                            "or a defined custom metric")
    for retained in additional_metrics_to_retain_v2 or []:
        retained = _as_dict(retained)
        metric = retained.get("metric")
        spec = spec_for(metric, custom_metric_types) if isinstance(metric, str) else None
        if spec is None:
            problems.append(f"additionalMetricsToRetainV2: metric {metric} is not a Device Defender metric "
                            "or a defined custom metric")
        problems += [f"additionalMetricsToRetainV2: {metric}: {p}"
                     for p in _dimension_problems(spec, retained.get("metricDimension"), dimension_names, False)]
    return problems


def metric_names_used(behaviors: Iterable[Mapping[str, Any]], v1: Iterable[str],
                      v2: Iterable[Mapping[str, Any]]) -> set[str]:
    """Every metric a profile uses or retains (ListSecurityProfiles(metricName), retention)."""
    names = {b.get("metric") for b in behaviors or [] if isinstance(b, dict)}
    names |= set(v1 or [])
    names |= {m.get("metric") for m in v2 or [] if isinstance(m, dict)}
    return {n for n in names if isinstance(n, str)}


def dimension_names_used(behaviors: Iterable[Mapping[str, Any]], v2: Iterable[Mapping[str, Any]]) -> set[str]:
    """Every dimension a profile refers to (ListSecurityProfiles(dimensionName), deletion guard)."""
    names = set()
    for item in list(behaviors or []) + list(v2 or []):
        if isinstance(item, dict):
            name = _as_dict(item.get("metricDimension")).get("dimensionName")
            if isinstance(name, str):
                names.add(name)
    return names
