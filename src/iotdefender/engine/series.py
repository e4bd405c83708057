"""Which series of datapoints a behavior reads.

A series is a metric, or ``metric|dimension|operator`` for a metric filtered by a dimension
(``metrics_catalog.series_key``). Evaluation looks a behavior's datapoint up by it, ingest retains
datapoints by it and the backtest reads history by it: one function, so the three agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iotdefender.metrics_catalog import AT_LEAST_OPERATORS, SIZE_METRICS, series_key, smallest_series


def behavior_series(behavior: Mapping[str, Any]) -> str | None:
    """The series ``behavior`` (or an additionalMetricsToRetainV2 item) reads; None without a metric.

    A message size behavior whose normal is "at least X" (greater-than, greater-than-equals, a
    static or statistical threshold) reads each window's smallest message; every other one (at
    most X, ML Detect, a retained metric) its largest (metrics_catalog.smallest_series).
    """
    metric = behavior.get("metric")
    if not isinstance(metric, str):
        return None
    dimension = behavior.get("metricDimension") or {}
    series = series_key(metric, dimension.get("dimensionName"), dimension.get("operator"))
    if metric in SIZE_METRICS:
        criteria = behavior.get("criteria")
        if isinstance(criteria, Mapping) and criteria.get("comparisonOperator") in AT_LEAST_OPERATORS:
            return smallest_series(series)
    return series
