"""aws:message-byte-size end to end: real MQTT clients publish on the service's broker, and a
behavior whose normal is "at least X bytes" sees each window's smallest message, one whose normal
is "at most X bytes" its largest, and a window without messages gives no datapoint (docs/cloud-metrics.md)."""

from __future__ import annotations

import datetime as dt
import time

import paho.mqtt.client as mqtt
import pytest

from tests.e2e.test_cloud_metrics import active, client
from tests.support.mqtt import stop_network_loop
from tests.support.processes import ServiceProcess

WINDOW = 2.0
ALL = "arn:aws:iot:us-east-1:123456789012:all/things"
BEHAVIORS = [
    {"name": "at-least-5", "metric": "aws:message-byte-size",
     "criteria": {"comparisonOperator": "greater-than-equals", "value": {"count": 5}}},
    {"name": "at-most-150", "metric": "aws:message-byte-size",
     "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 150}}},
]


@pytest.fixture
def service(tmp_path):
    svc = ServiceProcess(data_dir=tmp_path / "data", extra_args=["--metrics-window", str(WINDOW)])
    svc.start()
    iot = svc.client()
    iot.create_security_profile(securityProfileName="sizes", behaviors=BEHAVIORS)
    iot.attach_security_profile(securityProfileName="sizes", securityProfileTargetArn=ALL)
    yield svc, iot
    svc.stop()


def values(iot, thing: str) -> list[dict]:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.timezone.utc)
    return [d["value"] for d in iot.list_metric_values(
        thingName=thing, metricName="aws:message-byte-size", startTime=now - dt.timedelta(minutes=5),
        endTime=now + dt.timedelta(minutes=1))["metricDatumList"]]


def events(iot, thing: str) -> list[tuple[str, str, dict]]:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.timezone.utc)
    found = iot.list_violation_events(thingName=thing, startTime=now - dt.timedelta(minutes=5),
                                      endTime=now + dt.timedelta(minutes=1))["violationEvents"]
    return [(e["behavior"]["name"], e["violationEventType"], e.get("metricValue")) for e in found]


def start_of_window() -> None:
    time.sleep(WINDOW - time.time() % WINDOW + 0.1)


def stop(*clients: mqtt.Client) -> None:
    for c in clients:
        c.disconnect()
        stop_network_loop(c)


def test_one_message_then_idle_raises_no_alarm(service):
    """False alarm before: the idle windows after the message gave {"count": 0}."""
    svc, iot = service
    start_of_window()
    quiet = client(svc.mqtt_port, "one-message")
    quiet.publish("telemetry/a", b"x" * 100, qos=1).wait_for_publish(5)
    time.sleep(3 * WINDOW)  # connected and idle: nothing under 5 bytes was ever sent
    assert events(iot, "one-message") == []
    assert ("one-message", "at-least-5") not in active(iot)
    assert values(iot, "one-message") == [{"count": 100}]  # the window of the message, nothing for the idle ones
    stop(quiet)


def test_a_small_message_among_larger_ones_raises_the_alarm(service):
    """Missed alarm before: the window's largest, 100, was compared with "at least 5"."""
    svc, iot = service
    start_of_window()
    busy = client(svc.mqtt_port, "tiny-first")
    busy.publish("telemetry/b", b"x", qos=1).wait_for_publish(5)
    busy.publish("telemetry/b", b"x" * 100, qos=1).wait_for_publish(5)
    deadline = time.time() + 3 * WINDOW
    while time.time() < deadline:
        time.sleep(0.5)
        busy.publish("telemetry/b", b"x" * 100, qos=1).wait_for_publish(5)
    busy.publish("telemetry/b", b"x" * 200, qos=1).wait_for_publish(5)  # over "at most 150"
    time.sleep(2 * WINDOW)  # two more windows close: the one with the 200-byte message, an idle one

    # The next windows' messages are all of 100 bytes or more: they clear it.
    assert [(kind, v) for name, kind, v in events(iot, "tiny-first") if name == "at-least-5"][:2] == [
        ("in-alarm", {"count": 1}), ("alarm-cleared", {"count": 100})]
    assert ("tiny-first", "at-least-5") not in active(iot)
    assert [v for name, kind, v in events(iot, "tiny-first")
            if name == "at-most-150" and kind == "in-alarm"] == [{"count": 200}]
    assert ("tiny-first", "at-most-150") in active(iot)  # the idle window after the 200 bytes clears nothing
    # The window of the 1-byte message lists its smallest and its largest message.
    listed = values(iot, "tiny-first")
    assert listed[:3] == [{"count": 1}, {"count": 100}, {"count": 100}]
    # One datum a page: a page may end between a window's two datums.
    now = dt.datetime.now(dt.timezone.utc)
    pages = iot.get_paginator("list_metric_values").paginate(
        thingName="tiny-first", metricName="aws:message-byte-size", startTime=now - dt.timedelta(minutes=5),
        endTime=now + dt.timedelta(minutes=1), PaginationConfig={"PageSize": 1})
    assert [d["value"] for page in pages for d in page["metricDatumList"]] == listed
    stop(busy)
