"""The detection worker process: it dies with the service, and the service survives its death.

``serve`` stores and evaluates batches in a child process (batch_store.py). If the child dies, the
batch in flight is not acknowledged (the device sends it again), the next batch starts a new child
that reloads the alarm states, and nothing is lost or repeated. A ``kill -9`` of the service takes
the child with it. ``--detection-worker off`` keeps everything in one process.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import orjson
import pytest

from bench.process_usage import name as process_name
from iotdefender.child_process import DETECTION_WORKER_NAME
from tests.support.mqtt import Device, report
from tests.support.processes import ServiceProcess

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"
PORTS = {"name": "ports", "metric": "aws:listening-tcp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]}}}


def children(pid: int) -> dict[int, str]:
    """Child processes of ``pid`` with their command lines (from /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry)] = cmdline
    return found


def worker_of(svc: ServiceProcess) -> int:
    workers = [p for p in children(svc.process.pid) if process_name(p) == DETECTION_WORKER_NAME]
    assert len(workers) == 1, children(svc.process.pid)
    return workers[0]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def events(iot) -> list[tuple[str, str]]:
    pages = iot.get_paginator("list_violation_events").paginate(startTime=time.time() - 3600,
                                                                endTime=time.time() + 60)
    return [(e["thingName"], e["violationEventType"]) for p in pages for e in p["violationEvents"]]


@pytest.fixture
def service():
    svc = ServiceProcess(data_dir=Path(tempfile.mkdtemp()), extra_args=["--report-min-interval", "0"])
    svc.start()
    iot = svc.client()
    iot.create_security_profile(securityProfileName="p", behaviors=[PORTS])
    iot.attach_security_profile(securityProfileName="p", securityProfileTargetArn=ALL_THINGS)
    yield svc
    svc.stop()


def test_the_service_survives_its_worker(service):
    iot = service.client()
    device = Device(service.mqtt_port, "w-1")
    assert device.report(report(1, [443, 22]))[0] == "json/accepted"  # in-alarm
    first = worker_of(service)
    os.kill(first, signal.SIGKILL)
    deadline = time.time() + 30
    accepted = False
    report_id = 2
    while time.time() < deadline and not accepted:  # as a device does: send again until accepted
        device.publish(orjson.dumps(report(report_id, [443, 22])))
        try:
            accepted = device.reply(timeout=3)[0] == "json/accepted"
        except Exception:
            pass
        report_id += 1
    assert accepted
    assert worker_of(service) != first
    # The new worker reloaded the open alarm: still in alarm, no second in-alarm; then it clears once.
    assert device.report(report(report_id, [443]))[0] == "json/accepted"
    assert events(iot) == [("w-1", "in-alarm"), ("w-1", "alarm-cleared")]
    device.close()


def test_a_stop_signal_to_the_whole_process_group_leaves_the_worker_to_the_service(service):
    """Ctrl-C in a terminal and systemd's default stop signal every process of the service, the
    worker too: the worker used to die of SIGTERM at once (an error logged at every stop, and the
    batches of the service's graceful stop, the open cloud windows among them, had no worker). It
    ignores the signal; the service stops it when it is done with it."""
    device = Device(service.mqtt_port, "g-1")
    assert device.report(report(1, [443]))[0] == "json/accepted"
    worker = worker_of(service)
    os.kill(worker, signal.SIGTERM)  # what the group signal gives the worker
    time.sleep(0.5)
    assert alive(worker)
    assert device.report(report(2, [443]))[0] == "json/accepted"
    assert worker_of(service) == worker
    device.close()
    os.kill(worker, signal.SIGTERM)  # the group signal again, with the service this time
    service.process.send_signal(signal.SIGTERM)
    service.process.wait(30)
    assert service.log_path is not None
    log = service.log_path.read_text()
    assert '"stopped"' in log and "detection_worker_exited" not in log


def test_the_worker_dies_with_the_service(service):
    worker = worker_of(service)
    service.kill9()
    deadline = time.time() + 10
    while alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(worker)


def test_single_process_mode():
    svc = ServiceProcess(data_dir=Path(tempfile.mkdtemp()),
                         extra_args=["--report-min-interval", "0", "--detection-worker", "off"])
    svc.start()
    try:
        # The broker is its only child: no worker, forked (the service's command line) or spawned.
        assert [process_name(p) for p in children(svc.process.pid)] == ["mosquitto"]
        iot = svc.client()
        iot.create_security_profile(securityProfileName="p", behaviors=[PORTS])
        iot.attach_security_profile(securityProfileName="p", securityProfileTargetArn=ALL_THINGS)
        device = Device(svc.mqtt_port, "s-1")
        assert device.report(report(1, [80]))[0] == "json/accepted"
        assert device.report(report(2, [443]))[0] == "json/accepted"
        assert events(iot) == [("s-1", "in-alarm"), ("s-1", "alarm-cleared")]
        device.close()
    finally:
        svc.stop()

