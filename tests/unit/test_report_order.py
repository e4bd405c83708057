"""Report-id order and the per-thing throttle, with the jitter a device on the interval has."""

from __future__ import annotations

import pytest

from iotdefender.ingest.order import ReportOrder
from iotdefender.ingest.report import RejectCode, ReportRejected


def stored(order: ReportOrder, thing: str, report_id: int, now: float) -> None:
    order.check(thing, report_id, now)
    order.queued(thing, report_id, now)
    order.finished(thing, report_id, True)


def test_a_report_slightly_early_on_the_interval_is_accepted():
    order = ReportOrder(300.0)
    stored(order, "cam", 1, 1000.0)
    stored(order, "cam", 2, 1000.0 + 299.97)  # the "retry in 0.0 s" case
    stored(order, "cam", 3, 1299.97 + 275.0)  # 25 s early: within 10%


def test_a_report_well_inside_the_interval_is_throttled_with_a_useful_wait():
    order = ReportOrder(300.0)
    stored(order, "cam", 1, 1000.0)
    with pytest.raises(ReportRejected) as refused:
        order.check("cam", 2, 1000.0 + 260.0)
    assert refused.value.code == RejectCode.THROTTLED
    assert "retry in 10.0 s" in str(refused.value) and "30 s early" in str(refused.value)
    with pytest.raises(ReportRejected) as barely:
        order.check("cam", 2, 1000.0 + 269.99)
    assert "retry in 0.1 s" in str(barely.value)  # never "retry in 0.0 s"


def test_ids_must_increase():
    order = ReportOrder(0.0)
    stored(order, "cam", 5, 1.0)
    for report_id, code in ((5, RejectCode.DUPLICATE_REPORT_ID), (4, RejectCode.STALE_REPORT_ID)):
        with pytest.raises(ReportRejected) as refused:
            order.check("cam", report_id, 2.0)
        assert refused.value.code == code


def test_a_short_interval_tolerates_a_busy_machines_jitter_but_not_a_burst():
    """At 300 s / 3600 the 10% rule tolerated 8 ms: reports a 0.1 s device sent that a loaded box
    delivered 70 ms apart were refused. The tolerance is at least 50 ms, at most half the interval."""
    order = ReportOrder(300.0 / 3600)
    stored(order, "cam", 1, 10.0)
    stored(order, "cam", 2, 10.0 + 0.07)
    with pytest.raises(ReportRejected) as burst:
        order.check("cam", 3, 10.07 + 0.03)
    assert burst.value.code == RejectCode.THROTTLED
    tiny = ReportOrder(0.02)  # half of 20 ms, not 50 ms: a device still waits 10 ms
    stored(tiny, "cam", 1, 10.0)
    with pytest.raises(ReportRejected):
        tiny.check("cam", 2, 10.009)
    stored(tiny, "cam", 2, 10.0101)


def test_a_report_is_in_flight_from_queued_until_its_batch_ends():
    order = ReportOrder(0.0)
    assert not order.in_flight("cam", 5)
    order.check("cam", 5, 1.0)
    order.queued("cam", 5, 1.0)
    assert order.in_flight("cam", 5) and not order.in_flight("cam", 4) and not order.in_flight("cat", 5)
    order.finished("cam", 5, True)
    assert not order.in_flight("cam", 5)  # stored: a copy now is a duplicate (test_ids_must_increase)
