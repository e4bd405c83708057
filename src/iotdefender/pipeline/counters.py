"""The violation counters, counted once per event, in the process that serves ``/metrics``.

With the detection worker on, a batch's events are evaluated in the child but counted in the
service (from the summaries the child sends back): a counter incremented in the child would never
be scraped.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter

from iotdefender.engine.alarm import EventType
from iotdefender.pipeline.batch_store import EventListener, EventSummary

# CloudWatch's AWS/IoT metric names (reference §6.2); profile- and account-level series are
# sum by (SecurityProfileName) and sum(). Never labelled by thing: that would be millions of series.
_LABELS = ["SecurityProfileName", "BehaviorName"]
COUNTERS = {
    EventType.IN_ALARM: Counter("Violations", "New violations of security profile behaviors", _LABELS),
    EventType.CLEARED: Counter("ViolationsCleared", "Violations that were resolved", _LABELS),
    EventType.INVALIDATED: Counter("ViolationsInvalidated",
                                   "Violations whose information is no longer available", _LABELS),
}


def count_events(events: list[EventSummary]) -> None:
    for kind, profile, behavior in events:
        COUNTERS[EventType(kind)].labels(profile, behavior).inc()


def counting(then: Callable[[], None]) -> EventListener:
    """The service's listener: count the events, then ``then()`` (wake the alert loop) if any."""

    def listener(events: list[EventSummary]) -> None:
        count_events(events)
        if events:
            then()

    return listener
