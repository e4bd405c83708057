"""Report-id order and throttling per thing, advanced only by reports that were stored.

Report ids are "monotonically increasing" (reference §4.5): a report id equal to the last stored
one is a duplicate (a QoS 1 redelivery), a lower one is stale, and a thing's next report must wait
``min_interval`` after its previous one. Reports waiting to be stored count too, but only until
their batch ends: a report whose batch failed — the database was down, the queue was full — is
forgotten, so the device's resend of it is taken as new. (Before, a failed report could leave the
thing's order advanced, and the resends after a PostgreSQL outage were refused as StaleReportId:
lost for good.) A copy of a report still waiting (``in_flight``: paho resends an unacknowledged
QoS 1 report on reconnecting, often before the first copy is answered) is not judged here at all:
ingest answers it with the first copy's outcome.
"""

from __future__ import annotations

from iotdefender.ingest.report import RejectCode, ReportRejected

# (report id, time received)
Mark = tuple[int, float]

# A report may arrive this share of the interval early and still be accepted: a device that reports
# every 300 s on its own clock (AWS's agents sleep the interval between reports) reaches us a little
# early whenever its previous report was delayed on the way (network, broker, a QoS 1 resend), and
# refusing it with "retry in 0.0 s" makes it lose a whole interval. 10% keeps the limit's purpose
# (at most ~1.1 reports per interval sustained) and covers any jitter a healthy device has.
JITTER_TOLERANCE = 0.1
# Jitter is also absolute: the scheduling of a busy machine (the device's, the broker's) delays one
# report by tens of milliseconds whatever the interval. At 300 s the 10% rule covers it many times
# over; at a demo's 300 s / 3600 = 0.083 s, 10% is 8 ms, and a fleet reporting every 0.1-0.2 s on a
# loaded 2-core box was refused Throttled a few times in 10,000 (reports read by Mosquitto in the
# same pass). So the tolerance is at least this much, and never more than half the interval (a
# device must still wait at least half of it).
JITTER_FLOOR_S = 0.05


class ReportOrder:
    """Not thread-safe: used from the event loop only."""

    def __init__(self, min_interval: float, committed: dict[str, Mark] | None = None) -> None:
        self._min_interval = min_interval
        self._min_gap = min_interval - max(min_interval * JITTER_TOLERANCE, min(JITTER_FLOOR_S, min_interval / 2))
        self._committed: dict[str, Mark] = dict(committed or {})
        self._pending: dict[str, list[Mark]] = {}  # in id order: each was checked against the last

    def check(self, thing: str, report_id: int, now: float) -> None:
        """Raise ReportRejected unless this report may follow the thing's last stored or pending one."""
        queued = self._pending.get(thing)
        last = queued[-1] if queued else self._committed.get(thing)
        if last is None:
            return
        last_id, last_at = last
        if report_id == last_id:
            raise ReportRejected(RejectCode.DUPLICATE_REPORT_ID,
                                 f"Report id {report_id} was already accepted for thing {thing}", report_id)
        if report_id < last_id:
            raise ReportRejected(RejectCode.STALE_REPORT_ID,
                                 f"Report id {report_id} is lower than the last accepted id {last_id}; "
                                 "report ids must increase", report_id)
        wait = last_at + self._min_gap - now
        if wait > 0:
            raise ReportRejected(RejectCode.THROTTLED,
                                 f"Thing {thing} may report once every {self._min_interval:g} s "
                                 f"(up to {self._min_interval - self._min_gap:g} s early); "
                                 f"retry in {max(wait, 0.1):.1f} s", report_id)

    def in_flight(self, thing: str, report_id: int) -> bool:
        """A report with this id passed ``check`` and its batch has not ended: this is a resend of it."""
        queued = self._pending.get(thing)
        if not queued:  # the common case, without a generator per report
            return False
        return any(mark[0] == report_id for mark in queued)

    def queued(self, thing: str, report_id: int, now: float) -> None:
        """The report passed ``check`` and waits to be stored."""
        self._pending.setdefault(thing, []).append((report_id, now))

    def finished(self, thing: str, report_id: int, stored: bool) -> None:
        """The report's batch ended: stored (the order advances) or not (it is forgotten)."""
        queued = self._pending.get(thing)
        if queued:
            mark = queued[0] if queued[0][0] == report_id else next((m for m in queued if m[0] == report_id), None)
            if mark is not None:
                queued.remove(mark)
                if stored:
                    committed = self._committed.get(thing)
                    if committed is None or committed[0] < mark[0]:
                        self._committed[thing] = mark
            if not queued:
                del self._pending[thing]
