"""MQTT topic filters, as TOPIC_FILTER dimensions use them (reference §5.5).

Filters support the single-level ``+`` and multi-level ``#`` wildcards and the substitution
variable ``${iot:ClientId}``. Matching follows MQTT 3.1.1 §4.7: ``#`` matches the parent level
too (``a/#`` matches ``a``). Dimensions hold only filters MQTT allows (``contract/topic_filters.py``).
"""

from __future__ import annotations

from collections.abc import Iterable


def matches(topic_filter: str, topic: str, client_id: str = "") -> bool:
    levels = topic_filter.replace("${iot:ClientId}", client_id).split("/")
    parts = topic.split("/")
    for index, level in enumerate(levels):
        if level == "#":
            return True
        if index >= len(parts):
            return False
        if level != "+" and level != parts[index]:
            return False
    return len(parts) == len(levels)


def counted(topic: str | None, filters: Iterable[str], operator: str, client_id: str) -> bool:
    """Whether a message on ``topic`` counts for a dimension: IN matches one filter, NOT_IN none.
    An event without a topic (a refused CONNECT) is outside every topic dimension."""
    if topic is None:
        return False
    hit = any(matches(f, topic, client_id) for f in filters)
    return hit if operator != "NOT_IN" else not hit
