"""External broker mode: the service joins a real Mosquitto as a client; devices talk to Mosquitto."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.mqtt import Device, report
from tests.support.processes import ServiceProcess


@pytest.fixture(params=["sqlite", "postgresql"])
def via_mosquitto(request, mosquitto):
    url = request.getfixturevalue("postgres").create_database(f"ext{time.time_ns()}") \
        if request.param == "postgresql" else None
    svc = ServiceProcess(data_dir=Path(tempfile.mkdtemp()), database_url=url, extra_args=[
        "--mqtt-url", f"mqtt://127.0.0.1:{mosquitto.port}", "--report-min-interval", "0"])
    svc.start()
    iot = svc.client()
    iot.create_security_profile(securityProfileName="ext", behaviors=[
        {"name": "ports", "metric": "aws:listening-tcp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]}}}])
    iot.attach_security_profile(securityProfileName="ext",
                                securityProfileTargetArn="arn:aws:iot:us-east-1:123456789012:all/things")
    yield svc, iot, mosquitto
    svc.stop()


def test_reports_through_mosquitto_are_answered_stored_and_evaluated(via_mosquitto):
    svc, iot, broker = via_mosquitto
    thing = f"ext-{time.time_ns()}"
    dev = Device(broker.port, thing)
    topic, reply = dev.report(report(1, [443, 22]))
    assert topic == "json/accepted" and reply["thingName"] == thing and reply["reportId"] == 1
    topic, reply = dev.report(report(2, [443]), encoding="cbor")
    assert topic == "cbor/accepted" and reply["reportId"] == 2
    dev.publish(b"{broken")
    topic, reply = dev.reply()
    assert topic == "json/rejected" and reply["statusDetails"]["ErrorCode"] == "InvalidPayload"

    now = dt.datetime.now(dt.timezone.utc)
    datums = iot.list_metric_values(thingName=thing, metricName="aws:listening-tcp-ports",
                                    startTime=now - dt.timedelta(minutes=5), endTime=now)["metricDatumList"]
    assert [d["value"] for d in datums] == [{"ports": [22, 443]}, {"ports": [443]}]
    history = iot.list_violation_events(thingName=thing, startTime=now - dt.timedelta(minutes=5),
                                        endTime=now)["violationEvents"]
    assert [e["violationEventType"] for e in history] == ["in-alarm", "alarm-cleared"]
    dev.close()


def test_service_reconnects_after_the_broker_restarts(tmp_path):
    from tests.support.processes import Mosquitto

    broker = Mosquitto()
    broker.start()
    svc = ServiceProcess(data_dir=tmp_path, extra_args=["--mqtt-url", f"mqtt://127.0.0.1:{broker.port}",
                                                        "--report-min-interval", "0"])
    svc.start()
    try:
        port = broker.port
        broker.process.terminate()
        broker.process.wait(10)
        time.sleep(1.5)
        restarted = Mosquitto()
        restarted.port = port
        restarted.start()
        deadline = time.time() + 30
        while True:  # the service resubscribes after its backoff; then reports flow again
            dev = Device(port, "reconnecting")
            dev.publish(json.dumps(report(int(time.time() * 1000), [443])).encode())
            try:
                assert dev.reply(timeout=2)[0] == "json/accepted"
                dev.close()
                break
            except Exception:
                dev.close()
                if time.time() > deadline:
                    raise
        restarted.stop()
    finally:
        svc.stop()
        broker.stop()


def test_a_report_published_while_the_service_restarts_is_answered_after_it(tmp_path):
    """The service reads the operator's broker in a persistent session (brokers/external.py), so the
    broker keeps the reports published while the service is down and hands them over when it is
    back: the device is answered without publishing again (with a clean session it never was)."""
    from tests.support.processes import Mosquitto

    broker = Mosquitto()
    broker.start()
    svc = ServiceProcess(data_dir=tmp_path, extra_args=["--mqtt-url", f"mqtt://127.0.0.1:{broker.port}",
                                                        "--report-min-interval", "0"])
    dev = None
    try:
        svc.start()
        dev = Device(broker.port, "restarting")
        assert dev.report(report(1, [443]))[0] == "json/accepted"
        svc.stop()
        dev.publish(json.dumps(report(2, [443])).encode())  # nobody reads now
        time.sleep(0.5)
        assert dev.replies.empty()
        svc.start()
        topic, reply = dev.reply(timeout=15)
        assert topic == "json/accepted" and reply["reportId"] == 2
    finally:
        if dev is not None:
            dev.close()
        svc.stop()
        broker.stop()
