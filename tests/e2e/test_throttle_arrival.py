"""The report throttle measures the gap between a thing's reports where the broker received them.

Measured in the service instead, a report that waited there (its event loop busy, the machine
busy) was followed within the limit by the next one, sent a whole interval later, and the device
was refused Throttled: 5 of 47,000 reports of a paho-mqtt fleet reporting every 0.2 s in the
README's ML recipe (limit 300 s / 3600). Here the service process is stopped (SIGSTOP) between
two reports sent an interval apart: Mosquitto, a process of its own, receives both, and the service reads
them back to back when it continues.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

from tests.support.mqtt import Device, report
from tests.support.processes import ServiceProcess


def test_reports_sent_an_interval_apart_are_accepted_however_late_the_service_reads_them():
    svc = ServiceProcess(data_dir=Path(tempfile.mkdtemp()), extra_args=["--report-min-interval", "2"])
    svc.start()
    device = Device(svc.mqtt_port, "late-reader")
    try:
        assert device.report(report(1, [22]))[0] == "json/accepted"
        time.sleep(2.1)  # a whole interval after the first
        os.kill(svc.process.pid, signal.SIGSTOP)
        try:
            device.publish(json.dumps(report(2, [22])).encode())  # Mosquitto acknowledges it (QoS 1)
            time.sleep(2.1)
            device.publish(json.dumps(report(3, [22])).encode())  # an interval after report 2
            time.sleep(0.3)  # both wait in the service's socket
        finally:
            os.kill(svc.process.pid, signal.SIGCONT)
        outcomes = [device.reply() for _ in range(2)]
        assert sorted((r["reportId"], o) for o, r in outcomes) == [(2, "json/accepted"), (3, "json/accepted")], outcomes
        # A report that does come too soon after the last (well within 2 s) is still refused.
        device.publish(json.dumps(report(4, [22])).encode())
        outcome, body = device.reply()
        assert outcome == "json/rejected" and body["statusDetails"]["ErrorCode"] == "Throttled", body
    finally:
        device.close()
        svc.stop()
