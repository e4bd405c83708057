"""Flood-prone log lines: the first few per key and interval in full, then one summary line."""

from __future__ import annotations

from structlog.testing import capture_logs
import structlog

from iotdefender.log_limits import LimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limited(clock: Clock, timers: list) -> LimitedLog:
    return LimitedLog(structlog.get_logger("test"), "report_rejected", "iotdefender_report_rejections_total",
                      burst=3, interval_s=10.0, clock=clock, timer=lambda delay, action: timers.append((delay, action)))


def test_a_flood_of_one_code_is_a_few_lines_and_one_summary():
    clock, timers = Clock(), []
    log = limited(clock, timers)
    with capture_logs() as logs:
        for n in range(2000):
            log("Throttled", thing="t", code="Throttled", report_id=n)
        log("InvalidPayload", thing="u", code="InvalidPayload", report_id=1)
        assert [entry["report_id"] for entry in logs] == [0, 1, 2, 1]  # a new code is logged in full
        assert len(timers) == 1 and timers[0][0] == 10.0  # the summary is due at the interval's end
        timers[0][1]()
    assert len(logs) == 5
    assert logs[-1] == {"event": "report_rejected_summary", "log_level": "info", "interval_s": 10.0,
                        "counts": {"InvalidPayload": 1, "Throttled": 2000}, "not_logged": {"Throttled": 1997},
                        "exact_totals": "iotdefender_report_rejections_total"}


def test_the_next_interval_logs_in_full_again_and_sums_up_the_last():
    clock, timers = Clock(), []
    log = limited(clock, timers)
    with capture_logs() as logs:
        for _ in range(5):
            log("ServiceOverloaded")
        clock.now += 10.0
        log("ServiceOverloaded")  # after the interval: its summary first, then this line in full
        timers[0][1]()  # the timer of the interval already summed up writes nothing
        log.flush()  # the interval under way left nothing out: no summary
    assert [entry["event"] for entry in logs] == ["report_rejected"] * 3 + ["report_rejected_summary",
                                                                             "report_rejected"]
    assert logs[3]["not_logged"] == {"ServiceOverloaded": 2}


def test_a_quiet_stream_is_logged_whole():
    clock, timers = Clock(), []
    log = limited(clock, timers)
    with capture_logs() as logs:
        for _ in range(20):
            log("Throttled")
            clock.now += 4.0  # three or fewer a 10 s interval
        log.flush()
    assert len(logs) == 20 and timers == []
