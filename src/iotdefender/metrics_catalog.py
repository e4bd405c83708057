"""Every Device Defender Detect metric and what a behavior may do with it (reference §3.1).

Data, not code: the API's validation and the engine both read this table, so a metric's rules
are written once. Where AWS's documentation is unsure, the choice is noted beside the entry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

NUMERIC_OPERATORS = frozenset({"less-than", "less-than-equals", "greater-than", "greater-than-equals"})
CIDR_OPERATORS = frozenset({"in-cidr-set", "not-in-cidr-set"})
PORT_OPERATORS = frozenset({"in-port-set", "not-in-port-set"})
SET_OPERATORS = frozenset({"in-set", "not-in-set"})

# MetricValue.count is an AWS ``long`` >= 0 (reference §3.5): the largest count a report may carry,
# and the value at which a window's sum saturates (a 64-bit column or encoder cannot hold more).
COUNT_MAX = 2**63 - 1

DURATION_SECONDS = frozenset({300, 600, 900, 1800, 3600})
STATISTICS = frozenset({"p0", "p0.1", "p0.01", "p1", "p10", "p50", "p90", "p99", "p99.9", "p99.99", "p100"})
CONFIDENCE_LEVELS = frozenset({"LOW", "MEDIUM", "HIGH"})


@dataclass(frozen=True)
class MetricSpec:
    name: str
    side: str  # "cloud" | "device" | "custom"
    value_member: str  # the MetricValue member: count | cidrs | ports | number | numbers | strings
    operators: frozenset[str]
    duration: bool  # durationSeconds allowed
    statistical: bool  # statisticalThreshold allowed
    ml: bool  # mlDetectionConfig allowed
    dimension: bool  # a TOPIC_FILTER metricDimension allowed

    @property
    def is_list(self) -> bool:
        return self.value_member in ("cidrs", "ports", "numbers", "strings")


def _count(name: str, side: str, *, dimension: bool = False, ml: bool = True) -> MetricSpec:
    return MetricSpec(name, side, "count", NUMERIC_OPERATORS, True, True, ml, dimension)


BUILTIN_METRICS: Mapping[str, MetricSpec] = MappingProxyType({spec.name: spec for spec in (
    # cloud-side
    # message-byte-size: the docs list no duration for static behaviors but their statistical
    # example uses 300, so durationSeconds is allowed.
    _count("aws:message-byte-size", "cloud", dimension=True),
    _count("aws:num-messages-sent", "cloud", dimension=True),
    _count("aws:num-messages-received", "cloud", dimension=True),
    _count("aws:num-authorization-failures", "cloud", dimension=True),
    MetricSpec("aws:source-ip-address", "cloud", "cidrs", CIDR_OPERATORS, False, False, False, True),
    _count("aws:num-connection-attempts", "cloud"),
    _count("aws:num-disconnects", "cloud"),
    # disconnect-duration (2023): unit and operators unverified (reference §10); we follow the
    # third-party evidence: count, less-than(-equals) only, no duration, statistics, ML or dimension.
    MetricSpec("aws:disconnect-duration", "cloud", "count", frozenset({"less-than", "less-than-equals"}),
               False, False, False, False),
    # device-side
    _count("aws:all-bytes-out", "device"),
    _count("aws:all-bytes-in", "device"),
    _count("aws:all-packets-out", "device"),
    _count("aws:all-packets-in", "device"),
    _count("aws:num-listening-tcp-ports", "device"),
    _count("aws:num-listening-udp-ports", "device"),
    # num-established-tcp-connections: statistical example uses durationSeconds 900, so allowed.
    _count("aws:num-established-tcp-connections", "device"),
    MetricSpec("aws:destination-ip-addresses", "device", "cidrs", CIDR_OPERATORS, False, False, False, False),
    MetricSpec("aws:listening-tcp-ports", "device", "ports", PORT_OPERATORS, False, False, False, False),
    MetricSpec("aws:listening-udp-ports", "device", "ports", PORT_OPERATORS, False, False, False, False),
)})

# Custom metric types. `number` allows durations (only list types are excluded by the model's
# "Cannot be used with list-based metric datatypes"), statistics (not with negative values) and ML.
CUSTOM_METRIC_TYPES: Mapping[str, MetricSpec] = MappingProxyType({
    "number": MetricSpec("number", "custom", "number", NUMERIC_OPERATORS, True, True, True, False),
    "number-list": MetricSpec("number-list", "custom", "numbers", SET_OPERATORS, False, False, False, False),
    "string-list": MetricSpec("string-list", "custom", "strings", SET_OPERATORS, False, False, False, False),
    "ip-address-list": MetricSpec("ip-address-list", "custom", "cidrs", CIDR_OPERATORS, False, False, False, False),
})


def spec_for(metric: str, custom_metric_types: Mapping[str, str]) -> MetricSpec | None:
    """The rules of a built-in metric or of a defined custom metric; None when unknown."""
    if not isinstance(metric, str):
        return None
    if metric in BUILTIN_METRICS:
        return BUILTIN_METRICS[metric]
    metric_type = custom_metric_types.get(metric)
    return CUSTOM_METRIC_TYPES.get(metric_type) if metric_type is not None else None


def series_key(metric: str, dimension_name: str | None = None, operator: str | None = None) -> str:
    """The name of one series of datapoints: the metric, or ``metric|dimension|IN|NOT_IN``."""
    return metric if dimension_name is None else f"{metric}|{dimension_name}|{operator or 'IN'}"


# A device away for a whole cloud-side window (disconnected throughout, no connection attempted)
# still gets its 0s there, as AWS gives a monitored idle device count 0 (reference §3.3), but those
# 0s say nothing of how it behaves when it runs: ML Detect neither learns nor judges them
# (docs/detection.md, "A device away is not behaving"). Such a window carries this series too, 1. Its
# name holds a "/", which no metric name may (MetricName is [a-zA-Z0-9:_-]+ in the service model),
# so no custom metric can ever share it; no API lists it.
AWAY_SERIES = "iotdefender/away"
# What a metric's name may be (the service model's MetricName): neither a series of one ("|": a
# dimension, a smallest message) nor AWAY_SERIES is.
_METRIC_NAME = re.compile(r"[a-zA-Z0-9:_-]+")


def is_metric_name(name: str) -> bool:
    """Whether ``name`` can be a metric's (built-in or custom), not one of the service's own series."""
    return _METRIC_NAME.fullmatch(name) is not None
CLOUD_SIDE = frozenset(name for name, spec in BUILTIN_METRICS.items() if spec.side == "cloud")


def is_cloud_side(series: str) -> bool:
    """Whether ``series`` (a metric, or a series of one: dimension, smallest message) is cloud-side."""
    return series.split("|", 1)[0] in CLOUD_SIDE


# aws:message-byte-size is "the number of bytes in a message", for "the maximum or minimum size (in
# bytes) of each message transmitted from a device" (AWS, detect-cloud-side-metrics.html). A
# cloud-side window holds many messages, so it keeps two: its largest, in the metric's own series
# (what "at most" behaviors and ML Detect read), and its smallest, in a companion series (what
# "at least" behaviors read). Every message of the window is then judged: the largest is under a
# maximum iff all are, the smallest over a minimum iff all are. A window without messages has no
# message size: no datapoint in either series (docs/cloud-metrics.md).
SIZE_METRICS = frozenset({"aws:message-byte-size"})
AT_LEAST_OPERATORS = frozenset({"greater-than", "greater-than-equals"})
_SMALLEST = "|smallest"


def smallest_series(series: str) -> str:
    """The companion series of a size series (``metric`` or ``metric|dimension|operator``): each
    window's smallest message. Three ``|``-separated parts are a dimension, so two or four are not."""
    return series + _SMALLEST


def is_smallest_series(series: str) -> bool:
    return series.endswith(_SMALLEST) and series.split("|", 1)[0] in SIZE_METRICS


def size_series(series: str) -> tuple[str, str]:
    """The largest and smallest series of a size series given either of them."""
    largest = series[:-len(_SMALLEST)] if is_smallest_series(series) else series
    return largest, smallest_series(largest)


# What a built-in metric's value counts (reference §3.1), for people reading or writing behaviors.
METRIC_UNITS: Mapping[str, str] = MappingProxyType({
    "aws:message-byte-size": "bytes",
    "aws:num-messages-sent": "messages",
    "aws:num-messages-received": "messages",
    "aws:num-authorization-failures": "failures",
    "aws:source-ip-address": "IP addresses",
    "aws:num-connection-attempts": "connection attempts",
    "aws:num-disconnects": "disconnects",
    "aws:disconnect-duration": "minutes (unverified)",
    "aws:all-bytes-out": "bytes",
    "aws:all-bytes-in": "bytes",
    "aws:all-packets-out": "packets",
    "aws:all-packets-in": "packets",
    "aws:num-listening-tcp-ports": "ports",
    "aws:num-listening-udp-ports": "ports",
    "aws:num-established-tcp-connections": "connections",
    "aws:destination-ip-addresses": "IP addresses",
    "aws:listening-tcp-ports": "ports",
    "aws:listening-udp-ports": "ports",
})
