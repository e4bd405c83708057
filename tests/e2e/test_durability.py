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

import httpx
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
               hook: WebhookReceiver | None = None):  # type: ignore[no-untyped-def]
    """A service with the durability profile and a fleet of DEVICES reporting to it; its alerts go
    to ``hook`` if given."""
    args = ["--report-min-interval", "0"]
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


def healthz(svc: ServiceProcess) -> int:
    try:
        return httpx.get(svc.endpoint + "/healthz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


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
    wait_for(lambda: healthz(svc) == 503, 10, "/healthz 503 during the outage")
    with pytest.raises(iot.exceptions.ServiceUnavailableException):
        iot.list_security_profiles()
    time.sleep(max(0.0, 10 - (time.monotonic() - halted)))
    during = fleet.book.outcomes()
    cluster.resume()
    wait_for(lambda: healthz(svc) == 200, 30, "/healthz 200 after the outage")
    while not hook.received.empty():  # alerts from before the outage
        hook.received.get()
    hook.next(timeout=20)  # alert delivery resumed by itself (its loop used to die with the outage)
    time.sleep(3)
    fleet.drain()
    outcomes = fleet.book.outcomes()
    sends = sum(fleet.book.sent.values())
    answers = sum(len(a) for a in fleet.book.answers.values())
    figures = audit(iot, fleet)
    log_lines = [json.loads(line) for line in Path(svc.log_path).read_text().splitlines()
                 if line.startswith("{")]
    state_changes = [entry["event"] for entry in log_lines
                     if entry.get("event") in ("database_unavailable", "database_available")]
    tracebacks = sum(1 for entry in log_lines if "exception" in entry)
    publish_figures("postgresql-stopped", {
        "devices": DEVICES, "outage_seconds": 10, "reports_sent": sends, "answers": answers,
        "unanswered": fleet.book.unanswered, "outcomes": dict(outcomes), "log_state_changes": state_changes,
        "tracebacks_logged": tracebacks, **figures})
    assert during["ServiceUnavailable"] > 0  # the devices were told
    assert fleet.book.unanswered == 0 and answers == sends  # every report answered, exactly once
    assert outcomes["StaleReportId"] == 0 and outcomes["DuplicateReportId"] == 0
    assert outcomes["ACCEPTED"] > during["ACCEPTED"]  # recovered by itself
    assert figures["lost"] == 0 and figures["duplicated_events"] == 0 and figures["missing_events"] == 0
    assert state_changes == ["database_unavailable", "database_available"]
    assert tracebacks == 0
