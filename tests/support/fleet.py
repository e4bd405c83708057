"""A small fleet of real MQTT devices that report under load and keep books on every answer.

Each device behaves like AWS's agents: one report in flight at a time, report ids increasing, a
report answered with a retryable code (``Throttled``, ``ServiceUnavailable``,
``ServiceOverloaded``) or not answered at all sent again with the same id. The books say, per
report, how often it was sent and every answer it got, so a test can count what was accepted
and later lost, answered twice, or never answered.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.support.mqtt import Device

RETRYABLE = frozenset({"Throttled", "ServiceUnavailable", "ServiceOverloaded"})


@dataclass
class Book:
    sent: Counter[tuple[str, int]] = field(default_factory=Counter)
    answers: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    unanswered: int = 0  # reports given up on after ``reply_timeout`` (then sent again)
    #: Wall-clock time of each answer, in the order of ``answers`` (to find a lost report in the logs).
    answered_at: dict[tuple[str, int], list[float]] = field(default_factory=dict)

    def answer(self, thing: str, report_id: int, outcome: str) -> None:
        self.answers.setdefault((thing, report_id), []).append(outcome)
        self.answered_at.setdefault((thing, report_id), []).append(time.time())

    def accepted(self) -> set[tuple[str, int]]:
        return {key for key, outcomes in self.answers.copy().items() if "ACCEPTED" in outcomes}

    def outcomes(self) -> Counter[str]:
        return Counter(o for outcomes in self.answers.values() for o in outcomes)


def document(report_id: int) -> bytes:
    """``bytes_out`` carries the report id (retained, so ListMetricValues shows what was stored);
    the listening port alternates, so every second report of a thing raises or clears an alarm."""
    port = 22 if report_id % 2 else 443
    return orjson.dumps({"header": {"report_id": report_id, "version": "1.0"},
                         "metrics": {"listening_tcp_ports": {"ports": [{"port": port}], "total": 1},
                                     "network_stats": {"bytes_out": report_id}}})


class Fleet:
    def __init__(self, mqtt_port: int, things: list[str], interval: float = 0.05,
                 reply_timeout: float = 15.0) -> None:
        self.things = things
        self.book = Book()
        self._interval = interval
        self._reply_timeout = reply_timeout
        self._next = {t: 1 for t in things}
        self._in_flight: dict[str, tuple[int, float]] = {}
        self._retry: dict[str, tuple[int, float]] = {}  # (report id, when): answered retryable
        self._devices: dict[str, Device] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connect(mqtt_port)

    def connect(self, mqtt_port: int) -> None:
        """(Re)connect every device, e.g. after the service restarted; reports in flight are resent."""
        self.close()
        self._devices = {t: Device(mqtt_port, t) for t in self.things}
        for thing, (report_id, _) in list(self._in_flight.items()):
            self._send(thing, report_id)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def drain(self, timeout: float = 30.0) -> None:
        """Stop sending new reports; wait until every report in flight is answered for good."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + timeout
        while (self._in_flight or self._retry) and time.monotonic() < deadline:
            self._step(new_reports=False)
            time.sleep(0.01)

    def close(self) -> None:
        """All devices at once: a client whose broker died is waiting out a reconnect delay, which
        its ``loop_stop`` waits for (measured: 13 s for 20 devices one after another)."""
        if self._devices:
            with ThreadPoolExecutor(max_workers=len(self._devices)) as pool:
                list(pool.map(Device.close, self._devices.values()))

    def _send(self, thing: str, report_id: int) -> None:
        self._in_flight[thing] = (report_id, time.monotonic())
        self.book.sent[(thing, report_id)] += 1
        self._devices[thing].client.publish(f"$aws/things/{thing}/defender/metrics/json", document(report_id), qos=1)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._step(new_reports=True)
            time.sleep(self._interval)

    def _step(self, new_reports: bool) -> None:
        now = time.monotonic()
        for thing, device in self._devices.items():
            self._collect(thing, device)
            flight = self._in_flight.get(thing)
            retry = self._retry.get(thing)
            if retry is not None:
                if now >= retry[1]:
                    del self._retry[thing]
                    self._send(thing, retry[0])
            elif flight is None:
                if new_reports:
                    self._send(thing, self._next[thing])
            elif now - flight[1] > self._reply_timeout:
                self.book.unanswered += 1
                self._send(thing, flight[0])

    def _collect(self, thing: str, device: Device) -> None:
        while True:
            try:
                _, reply = device.replies.get_nowait()
            except queue.Empty:
                return
            outcome = reply["status"] if reply["status"] == "ACCEPTED" else reply["statusDetails"]["ErrorCode"]
            report_id = reply.get("reportId")
            self.book.answer(thing, report_id, outcome)
            flight = self._in_flight.get(thing)
            if flight is None or flight[0] != report_id:
                continue  # an answer to an earlier send of a report (counted above)
            del self._in_flight[thing]
            if outcome in RETRYABLE:  # as agents do: the same report again, a little later
                self._retry[thing] = (report_id, time.monotonic() + 0.2)
            else:
                self._next[thing] = report_id + 1


def per_device(fleets: list[Fleet]) -> dict[str, int]:
    """Reports accepted so far per device of ``fleets``."""
    counts = {thing: 0 for f in fleets for thing in f.things}
    for f in fleets:
        for thing, _ in f.book.accepted():
            counts[thing] += 1
    return counts


def prepare(iot: Any, alert_topic: str | None = None) -> Any:
    """The profile the fleet's documents are judged by (port 22 violates; ``bytes_out``, the report
    id, retained), attached to every thing; its alerts go to ``alert_topic`` if given."""
    alerts = {} if alert_topic is None else {"alertTargets": {"SNS": {
        "alertTargetArn": alert_topic, "roleArn": "arn:aws:iam::123456789012:role/dd"}}}
    iot.create_security_profile(
        securityProfileName="durability",
        behaviors=[{"name": "ports", "metric": "aws:listening-tcp-ports",
                    "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]}}}],
        additionalMetricsToRetainV2=[{"metric": "aws:all-bytes-out"}], **alerts)
    iot.attach_security_profile(securityProfileName="durability",
                                securityProfileTargetArn="arn:aws:iot:us-east-1:123456789012:all/things")
    return iot


def audit(iot: Any, fleet: Fleet) -> dict[str, Any]:
    """Lost and duplicated, from the service's own answers and records (via boto3 only)."""
    accepted = fleet.book.accepted()
    lost = duplicated = missing = stored_total = 0
    lost_reports: list[str] = []
    for thing in fleet.things:
        stored = stored_report_ids(iot, thing)
        stored_total += len(stored)
        missing_ids = sorted({rid for t, rid in accepted if t == thing} - stored)
        lost += len(missing_ids)
        lost_reports += [f"{thing}/{rid} answered {fleet.book.answers[(thing, rid)]} at "
                         f"{fleet.book.answered_at[(thing, rid)]}" for rid in missing_ids]
        # Odd report ids listen on port 22 (in alarm), even ones on 443: the transitions that the
        # stored reports imply, in order, are the events that must exist — each exactly once.
        expected = {"in-alarm": 0, "alarm-cleared": 0}
        alarm = False
        for rid in sorted(stored):
            if (rid % 2 == 1) != alarm:
                alarm = not alarm
                expected["in-alarm" if alarm else "alarm-cleared"] += 1
        pages = iot.get_paginator("list_violation_events").paginate(
            thingName=thing, startTime=time.time() - 3600, endTime=time.time() + 60)
        events = [e["violationEventType"] for p in pages for e in p["violationEvents"]]
        for kind, count in expected.items():
            duplicated += max(0, events.count(kind) - count)
            missing += max(0, count - events.count(kind))
    figures: dict[str, Any] = {"accepted": len(accepted), "stored": stored_total, "lost": lost,
                               "duplicated_events": duplicated, "missing_events": missing}
    if lost_reports:  # which, and when they were answered: to find them in the nodes' logs
        figures["lost_reports"] = lost_reports[:10]
    return figures


def stored_report_ids(iot: Any, thing: str) -> set[int]:
    """The report ids whose datapoints the service stored (``bytes_out`` = report id)."""
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    pages = iot.get_paginator("list_metric_values").paginate(
        thingName=thing, metricName="aws:all-bytes-out", startTime=now - dt.timedelta(hours=1),
        endTime=now + dt.timedelta(minutes=5))
    return {d["value"]["count"] for page in pages for d in page["metricDatumList"]}


def not_answered_for_good(fleet: Fleet) -> list[tuple[str, int]]:
    """Reports whose last answer is not a final one (accepted or a non-retryable rejection)."""
    return [key for key in fleet.book.sent if not fleet.book.answers.get(key)
            or fleet.book.answers[key][-1] in RETRYABLE]


def exact_books(iot: Any, fleets: list[Fleet]) -> list[dict[str, Any]]:
    """Drain the fleets, then hold them to exact books: every report answered for good, none given
    up on, no accepted report lost, no violation event duplicated or missing; each fleet's audit."""
    for fleet in fleets:
        fleet.drain()
    assert [f.book.unanswered for f in fleets] == [0] * len(fleets)
    assert [not_answered_for_good(f) for f in fleets] == [[]] * len(fleets)
    figures = [audit(iot, f) for f in fleets]
    for f in figures:
        assert f["lost"] == 0 and f["duplicated_events"] == 0 and f["missing_events"] == 0, figures
    return figures
