"""Which TOPIC_FILTER dimension values the API accepts: the MQTT topic filters MQTT allows.

MQTT 3.1.1 §4.7.1 forbids ``#`` anywhere but as the whole last level (``a/#/b``, ``a/b#``) and
``+`` sharing a level (``a/b+``): a broker refuses to subscribe with such a filter and no topic can
match it as written, so a dimension holding one would silently count nothing. AWS does not
document whether CreateDimension checks its stringValues; refusing them is our choice
(docs/api-behaviour.md). Matching lives with the cloud-side metrics (``cloud/topic_filter.py``).
"""

from __future__ import annotations

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
