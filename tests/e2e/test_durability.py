"""Durability under load (docs/durability.md publishes the figures these tests print).

A fleet of real MQTT devices reports continuously (tests/support/fleet.py) while the service is
killed with SIGKILL, or while its PostgreSQL is stopped. Afterwards the books are checked against
what the service stored: a report answered ``accepted`` must be stored (lost = accepted and not
stored), every violation transition must be recorded exactly once (duplicated = events beyond the
transitions of the stored reports), and during an outage every report must still be answered
exactly once — with ``ServiceUnavailable``, which the device retries, never ``StaleReportId``.

test_detection.py's kill -9 test steps one device through a restart; this one kills the service
in the middle of a load, twice, on both databases.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest

from tests.support.figures import publish_figures
from tests.support.fleet import Fleet, audit, prepare
from tests.support.processes import PostgresCluster, ServiceProcess, wait_for
from tests.support.webhook import WebhookReceiver

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"
TOPIC = "arn:aws:sns:us-east-1:123456789012:durability-alerts"
DEVICES = 20


@contextlib.contextmanager
def under_load(database_url: str | None, data_dir: Path, prefix: str,
               hook: WebhookReceiver | None = None, extra_args: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """A service with the durability profile and a fleet of DEVICES reporting to it; its alerts go
    to ``hook`` if given."""
    args = ["--report-min-interval", "0", *extra_args]
    if hook is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        subscriptions = data_dir / "subscriptions.json"
        subscriptions.write_text(json.dumps({TOPIC: [{"webhook": hook.url, "secret": hook.secret}]}))
        args += ["--alert-subscriptions", str(subscriptions)]
    svc = ServiceProcess(data_dir=data_dir, database_url=database_url, extra_args=args)
    svc.start()
    fleet = None
    try:
        iot = prepare(svc.client(), TOPIC)
        fleet = Fleet(svc.mqtt_port, [f"{prefix}-{n}" for n in range(DEVICES)])
        fleet.start()
        yield svc, iot, fleet
    finally:
        if fleet is not None:
            fleet.close()
        svc.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill9_under_load_loses_and_repeats_nothing(backend, request, tmp_path):
    url = request.getfixturevalue("postgres").create_database(f"kill{time.time_ns()}") \
        if backend == "postgresql" else None
    with under_load(url, tmp_path / "svc", f"kill-{backend}") as (svc, iot, fleet):
        kills = 2
        for _ in range(kills):
            time.sleep(3)
            svc.kill9()  # while the fleet keeps publishing
            fleet.pause()
            svc.start()
            fleet.connect(svc.mqtt_port)  # the agents reconnect and send what got no answer
            fleet.start()
        time.sleep(2)
        fleet.drain()
        figures = audit(iot, fleet)
        publish_figures(f"kill9-{backend}", {"kills": kills, "devices": DEVICES, **figures})
        assert figures["accepted"] > 0
        assert figures["lost"] == 0 and figures["duplicated_events"] == 0 and figures["missing_events"] == 0



def test_postgresql_stopped_under_load(tmp_path):
    cluster = PostgresCluster()
    cluster.start()
    hook = WebhookReceiver("outage-secret")
    try:
        with under_load(cluster.create_database("outage"), tmp_path / "svc", "outage", hook) as (svc, iot, fleet):
            outage(cluster, svc, iot, fleet, hook)
    finally:
        cluster.stop()
        hook.close()


def outage(cluster: PostgresCluster, svc: ServiceProcess, iot, fleet: Fleet,  # type: ignore[no-untyped-def]
           hook: WebhookReceiver) -> None:
    """PostgreSQL stopped for 10 s under load, then started again."""
    time.sleep(3)
    cluster.halt()
    halted = time.monotonic()
    wait_for(lambda: svc.healthz(5) == 503, 10, "/healthz 503 during the outage")
    with pytest.raises(iot.exceptions.ServiceUnavailableException):
        iot.list_security_profiles()
    time.sleep(max(0.0, 10 - (time.monotonic() - halted)))
    during = fleet.book.outcomes()
    cluster.resume()
    wait_for(lambda: svc.healthz(5) == 200, 30, "/healthz 200 after the outage")
    while not hook.received.empty():  # alerts from before the outage
        hook.received.get()
    hook.next(timeout=20)  # alert delivery resumed by itself (its loop used to die with the outage)
    time.sleep(3)
    books = outage_books(svc, iot, fleet)
    publish_figures("postgresql-stopped", {"devices": DEVICES, "outage_seconds": 10, **books})
    outcomes = books["outcomes"]
    assert during["ServiceUnavailable"] > 0  # the devices were told
    assert outcomes["ACCEPTED"] > during["ACCEPTED"]  # recovered by itself
    assert_outage_books(books)


def outage_books(svc: ServiceProcess, iot, fleet: Fleet) -> dict:  # type: ignore[no-untyped-def]
    """After an outage: drain the fleet, then what it sent and heard, what the service stored
    (``audit``) and the outage's lines in the service's log."""
    fleet.drain()
    log_lines = [json.loads(line) for line in Path(svc.log_path).read_text().splitlines()
                 if line.startswith("{")]
    return {"reports_sent": sum(fleet.book.sent.values()),
            "answers": sum(len(a) for a in fleet.book.answers.values()),
            "unanswered": fleet.book.unanswered, "outcomes": fleet.book.outcomes(),
            "log_state_changes": [entry["event"] for entry in log_lines
                                  if entry.get("event") in ("database_unavailable", "database_available")],
            "tracebacks_logged": sum(1 for entry in log_lines if "exception" in entry), **audit(iot, fleet)}


def assert_outage_books(books: dict) -> None:  # type: ignore[type-arg]
    outcomes = books["outcomes"]
    assert books["unanswered"] == 0 and books["answers"] == books["reports_sent"]  # every report answered once
    assert outcomes["StaleReportId"] == 0 and outcomes["DuplicateReportId"] == 0
    assert books["lost"] == 0 and books["duplicated_events"] == 0 and books["missing_events"] == 0
    assert books["log_state_changes"] == ["database_unavailable", "database_available"]
    assert books["tracebacks_logged"] == 0


#: The service's bound on one unanswered round trip in the freeze test (``--database-timeout``).
ROUND_TRIP_BOUND_S = 2.0
FREEZE_S = 12.0


def count(fleet: Fleet, outcome: str) -> int:
    """Answers ``outcome`` so far (read while the fleet's thread adds answers)."""
    return sum(outcomes.count(outcome) for outcomes in fleet.book.answers.copy().values())


def test_postgresql_frozen_under_load(tmp_path):
    """PostgreSQL's processes stopped (SIGSTOP) for FREEZE_S under load, then continued: its
    connections stay open and the kernel acknowledges every packet, so only the service's own
    bound on a round trip can tell the devices (docs/durability.md). Before that bound the
    service's transactions waited for the server, and the devices for their answers, until the
    server ran again."""
    cluster = PostgresCluster()
    cluster.start()
    try:
        with under_load(cluster.create_database("frozen"), tmp_path / "svc", "frozen",
                        extra_args=("--database-timeout", str(ROUND_TRIP_BOUND_S))) as (svc, iot, fleet):
            time.sleep(3)
            accepted_before = count(fleet, "ACCEPTED")
            cluster.freeze()
            frozen = time.monotonic()
            try:
                # Told while the server is still frozen (without the bound: nothing until the thaw).
                wait_for(lambda: count(fleet, "ServiceUnavailable") > 0, FREEZE_S - 1,
                         "a ServiceUnavailable answer while PostgreSQL is frozen")
                first_unavailable = time.monotonic() - frozen
                wait_for(lambda: svc.healthz(5) == 503, 5, "/healthz 503 while PostgreSQL is frozen")
                time.sleep(max(0.0, FREEZE_S - (time.monotonic() - frozen)))
                accepted_frozen = count(fleet, "ACCEPTED")
                unavailable_frozen = count(fleet, "ServiceUnavailable")
            finally:
                cluster.thaw()
            thawed = time.monotonic()
            wait_for(lambda: count(fleet, "ACCEPTED") > accepted_frozen, 30, "reports accepted after the thaw")
            accepted_again = time.monotonic() - thawed
            time.sleep(3)
            books = outage_books(svc, iot, fleet)
            publish_figures("postgresql-frozen", {
                "devices": DEVICES, "freeze_seconds": FREEZE_S, "database_timeout": ROUND_TRIP_BOUND_S,
                "freeze_to_first_service_unavailable_s": round(first_unavailable, 2),
                "thaw_to_accepted_s": round(accepted_again, 2), "accepted_before_freeze": accepted_before,
                "accepted_while_frozen": accepted_frozen - accepted_before,
                "service_unavailable_while_frozen": unavailable_frozen, **books})
            assert_outage_books(books)
    finally:
        cluster.stop()
