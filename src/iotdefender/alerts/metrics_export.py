"""Detect metrics export: the datapoints a security profile marks ``exportMetric``, published in
batches to its ``metricsExportConfig.mqttTopic`` in AWS's metrics export schema.

AWS Device Defender "batches metric values for each configured metric and publishes them to a
configured MQTT topic" (the developer guide's "Detect metrics export"; the batch's layout is its
"Metrics export schema", reference §6.3). Here a batch is what one detection transaction stored
for a topic: its rows are written into the outbox (``mqtt:<topic>`` destinations) by the
transaction that stores the datapoints, so an exported datapoint is one that was stored, and one
that was stored is exported even if the service dies right after the commit; the delivery loop
(``outbox.py``) publishes them on the service's broker, retried like any destination, at least
once.

What is exported, per profile monitoring the device: the series of its behaviors and of its
``additionalMetricsToRetainV2`` items with ``exportMetric`` true (a dimension's series with its
dimension), as long as the profile has a ``metricsExportConfig``. Two profiles exporting the same
series of a device to one topic send it once. Where the schema leaves the unit open, ``timestamp``
is in milliseconds since the epoch, as the Device Defender agent's own report timestamps are; a
datapoint is sent once, so its ``version`` is always 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from iotdefender.metrics_catalog import series_key

#: The kind of outbox destination that is a topic of the service's MQTT broker (``mqtt:<topic>``).
MQTT_PREFIX = "mqtt:"
#: The most bytes one export message holds: AWS IoT's largest MQTT message (128 KB). A batch
#: larger than that is sent as several messages.
MAX_MESSAGE_BYTES = 128 * 1024
_HEAD, _TAIL = b'{"version":"1.0","metrics":[', b"]}"
_ENVELOPE = len(_HEAD) + len(_TAIL)

# (thing, datapoints by series, time, report id): a detection batch item (pipeline/batch_store.py).
Item = tuple[str, Mapping[str, Mapping[str, Any]], float, int | None]


def exported_series(profile: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, str] | None]]:
    """{series: (metric name, dimension or None)} that ``profile`` exports; empty without a
    ``metricsExportConfig``."""
    if not profile.get("metrics_export_config"):
        return {}
    found: dict[str, tuple[str, dict[str, str] | None]] = {}
    for item in list(profile.get("behaviors") or []) + list(profile.get("additional_metrics_to_retain_v2") or []):
        if not isinstance(item, Mapping) or not item.get("exportMetric") or not isinstance(item.get("metric"), str):
            continue
        metric = item["metric"]
        dimension = item.get("metricDimension") or {}
        name, operator = dimension.get("dimensionName"), dimension.get("operator") or "IN"
        found[series_key(metric, name, operator if name else None)] = (
            metric, {"name": name, "operator": operator} if name else None)
    return found


def export_rows(items: Iterable[Item], profiles_of: Callable[[str], Sequence[Mapping[str, Any]]],
                topic_arn: Callable[[str], str], now: float) -> list[dict[str, Any]]:
    """The outbox rows (``alert_outbox.insert_pending``) exporting what ``items`` hold: per topic,
    messages of at most ``MAX_MESSAGE_BYTES``."""
    by_topic: dict[str, list[bytes]] = {}
    # What a list of profiles exports, by topic, each series once (``profiles_of`` gives every
    # thing with the same groups the same list): read once per list, not per item and profile.
    plans: dict[int, list[tuple[list[bytes], dict[str, tuple[str, dict[str, str] | None]]]]] = {}
    for thing, datapoints, at, _ in items:
        monitoring = profiles_of(thing)
        plan = plans.get(id(monitoring))
        if plan is None:
            merged: dict[str, dict[str, tuple[str, dict[str, str] | None]]] = {}
            for profile in monitoring:
                series = exported_series(profile)
                if series:
                    merged.setdefault(str(profile["metrics_export_config"].get("mqttTopic") or ""), {}).update(series)
            plan = plans[id(monitoring)] = [(by_topic.setdefault(topic, []), series) for topic, series in merged.items()]
        stamp = round(at * 1000)
        for entries, series in plan:
            for key, (metric, dimension) in series.items():
                value = datapoints.get(key)
                if value is None:
                    continue
                entry: dict[str, Any] = {"name": metric, "thing": thing, "value": value, "version": 1,
                                         "timestamp": stamp}
                if dimension is not None:
                    entry["dimension"] = dimension
                entries.append(orjson.dumps(entry))
    return [{"target_arn": topic_arn(topic), "destination": MQTT_PREFIX + topic, "message": message,
             "created_at": now}
            for topic, entries in by_topic.items() if entries
            for message in messages(entries)]


def messages(entries: Sequence[bytes]) -> list[str]:
    """The export messages carrying ``entries`` (each one encoded metric, or several joined by
    commas), in order, each within ``MAX_MESSAGE_BYTES`` (one entry larger than that still goes,
    alone)."""
    out: list[str] = []
    batch: list[bytes] = []
    size = _ENVELOPE
    for entry in entries:
        if batch and size + len(entry) + 1 > MAX_MESSAGE_BYTES:
            out.append(_message(batch))
            batch, size = [], _ENVELOPE
        batch.append(entry)
        size += len(entry) + 1
    if batch:
        out.append(_message(batch))
    return out


def merged(batches: Iterable[str]) -> list[str]:
    """The messages (``messages``) of several outbox rows of one topic, merged: each row's metrics
    stay together and in order, and a message holds as many rows as 128 KB allows."""
    head, tail = len(_HEAD), len(_TAIL)
    return messages([encoded[head:-tail] for batch in batches if len(encoded := batch.encode()) > head + tail])


def _message(batch: Sequence[bytes]) -> str:
    return (_HEAD + b",".join(batch) + _TAIL).decode()
