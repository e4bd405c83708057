"""MQTT topic filters, as TOPIC_FILTER dimensions use them (reference §5.5).

Filters support the single-level ``+`` and multi-level ``#`` wildcards and the substitution
variable ``${iot:ClientId}``. Matching follows MQTT 3.1.1 §4.7: ``#`` matches the parent level
too (``a/#`` matches ``a``).

``filter_problem`` refuses, when a dimension is created or updated, the filters that MQTT 3.1.1
§4.7.1 forbids (``a/#/b``, ``a/b#``, ``a/b+``): a broker refuses to subscribe with them and no
topic can match them as written, so a dimension holding one would silently count nothing. AWS
does not document whether CreateDimension checks its stringValues; refusing is our choice
(docs/api-behaviour.md).
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


FILTER_CONSTRAINT = ("Member must be an MQTT topic filter: the multi-level wildcard # only as the whole "
                     "last level, the single-level wildcard + only as a whole level")


def filter_problem(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid MQTT topic filter (FILTER_CONSTRAINT), or None."""
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return FILTER_CONSTRAINT
        if "+" in level and level != "+":
            return FILTER_CONSTRAINT
    return None


def counted(topic: str | None, filters: Iterable[str], operator: str, client_id: str) -> bool:
    """Whether a message on ``topic`` counts for a dimension: IN matches one filter, NOT_IN none.
    An event without a topic (a refused CONNECT) is outside every topic dimension."""
    if topic is None:
        return False
    hit = any(matches(f, topic, client_id) for f in filters)
    return hit if operator != "NOT_IN" else not hit
