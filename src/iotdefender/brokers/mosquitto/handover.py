"""What the plugin handed the service and the service never got, counted and logged.

The plugin hands reports and event batches to the service's connection at QoS 0 (defender_plugin.c),
and Mosquitto drops such messages when that connection is down or its queue in the broker is full
(``max_queued_messages``). A dropped report batch holds reports the devices' PUBLISHes were
acknowledged for: they are never answered. Before the batches were numbered, an outside-in test
lost 55 of 400 honest devices' reports that way, with no counter or log line showing it. Each report
batch now says how many reports the plugin instance handed over before it, and each event batch its
number (the plugin's ``Q`` record), so a gap is counted here.

The batches' numbers are also what the service tells the plugin it has read (``next_batches``, sent
in a TAKEN frame): the plugin sends only so many batches unread ("flow" in defender_plugin.c).
"""

from __future__ import annotations

import structlog
from prometheus_client import Counter

from iotdefender.log_limits import LimitedLog

log = structlog.get_logger("iotdefender.broker")

REPORTS_LOST = Counter(
    "iotdefender_broker_reports_lost",
    "Reports the broker acknowledged and handed to the service that never reached it (its connection was "
    "down, or its queue in the broker overflowed): never answered nor stored")
EVENT_BATCHES_LOST = Counter(
    "iotdefender_broker_event_batches_lost",
    "Batches of broker events (cloud-side metrics, refusals) that never reached the service")
LOST_LOG = LimitedLog(log, "broker_handover_lost",
                      "iotdefender_broker_reports_lost_total, iotdefender_broker_event_batches_lost_total",
                      level="error")

_WRAP = 2**32  # the plugin's counters are 32-bit


class _Sequence:
    """One of the plugin's counters, followed: a gap between the number expected and the one a batch
    carries is what was lost. A new plugin instance (Mosquitto restarted) starts afresh."""

    def __init__(self, lost: Counter, key: str, detail: str) -> None:
        self._lost, self._key, self._detail = lost, key, detail
        self._next: tuple[int, int] | None = None  # (instance, number expected next)

    def saw(self, instance: int, number: int, advance: int) -> int:
        lost = 0
        if self._next is not None and self._next[0] == instance:
            lost = _gap(self._next[1], number)
            if lost:
                self._lost.inc(lost)
                LOST_LOG(self._key, lost=lost, what=self._key, detail=self._detail)
        self._next = (instance, (number + advance) % _WRAP)
        return lost


class Handover:
    """The report and event batches of the plugin, followed."""

    def __init__(self) -> None:
        self._instance: int | None = None
        self._next_report_batch = 0
        self._next_event_batch = 0
        self._reports = _Sequence(REPORTS_LOST, "reports",
                                  "reports acknowledged to their devices never reached the service: they are "
                                  "not answered (the broker dropped them)")
        self._events = _Sequence(EVENT_BATCHES_LOST, "event_batches",
                                 "broker events never reached the service: cloud-side metrics and refusal "
                                 "counts are short")

    def reports(self, instance: int, number: int, before: int, count: int) -> int:
        """The report batch ``number`` of ``count`` reports, ``before`` handed over before it; returns
        the reports lost since the previous batch (counted and logged)."""
        self._read(instance)
        self._next_report_batch = (number + 1) % _WRAP
        return self._reports.saw(instance, before, count)

    def events(self, instance: int, number: int) -> int:
        """An event batch numbered ``number``; returns the batches lost since the previous one."""
        self._read(instance)
        self._next_event_batch = (number + 1) % _WRAP
        return self._events.saw(instance, number, 1)

    def next_batches(self) -> tuple[int, int, int] | None:
        """(plugin instance, the report batch and the event batch it expects next), once a batch of
        the instance was read. A kind not read yet from it counts as 0 (the plugin ignores a number
        it did not send)."""
        if self._instance is None:
            return None
        return self._instance, self._next_report_batch, self._next_event_batch

    def _read(self, instance: int) -> None:
        if instance != self._instance:  # Mosquitto restarted: its numbers start again
            self._instance, self._next_report_batch, self._next_event_batch = instance, 0, 0


def _gap(expected: int, got: int) -> int:
    """How many were skipped from ``expected`` to ``got`` (modulo 2^32); a number behind the
    expected one is not a loss (it cannot happen on one connection: counted as none)."""
    gap = (got - expected) % _WRAP
    return gap if gap < _WRAP // 2 else 0
