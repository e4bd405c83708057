"""Which series of datapoints a behavior reads.

A series is a metric, or ``metric|dimension|operator`` for a metric filtered by a dimension
(``metrics_catalog.series_key``). Evaluation looks a behavior's datapoint up by it, ingest retains
datapoints by it and the backtest reads history by it: one function, so the three agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iotdefender.metrics_catalog import series_key


def behavior_series(behavior: Mapping[str, Any]) -> str | None:
    """The series ``behavior`` (or an additionalMetricsToRetainV2 item) reads; None without a metric."""
    metric = behavior.get("metric")
    if not isinstance(metric, str):
        return None
    dimension = behavior.get("metricDimension") or {}
    return series_key(metric, dimension.get("dimensionName"), dimension.get("operator"))
