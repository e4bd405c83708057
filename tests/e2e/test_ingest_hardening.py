"""Issue #11 through real MQTT clients: one device's bad report never costs another device its
report, and hostile payloads are answered ``rejected`` with the session intact (SQLite, PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections import Counter

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.figures import publish_figures
from tests.support.metrics import metric_sample
from tests.support.mqtt import Device
from tests.support import plain_http

SERVICE_ARGS = ["--report-min-interval", "0"]
ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"
COUNT_MAX = 2**63 - 1
BYTES_IN = {"name": "BytesIn", "metric": "aws:all-bytes-in",
            "criteria": {"comparisonOperator": "less-than", "value": {"count": 1000000}, "durationSeconds": 300}}


@pytest.fixture(scope="module")
def iot(service):
    client = service.client()
    client.create_custom_metric(metricName="labels", metricType="string-list")
    client.create_security_profile(securityProfileName="hardening", behaviors=[BYTES_IN],
                                   additionalMetricsToRetainV2=[{"metric": "labels"}])
    client.attach_security_profile(securityProfileName="hardening", securityProfileTargetArn=ALL_THINGS)
    return client


def network(report_id: int, bytes_in: int) -> bytes:
    """The issue's reproduction, with the counter under test."""
    return json.dumps({"header": {"report_id": report_id, "version": "1.0"},
                       "metrics": {"network_stats": {"bytes_in": bytes_in, "bytes_out": 1, "packets_in": 1,
                                                     "packets_out": 1}}}).encode()


def stored(iot, thing: str, metric: str = "aws:all-bytes-in") -> list:
    now = dt.datetime.now(dt.timezone.utc)
    pages = iot.get_paginator("list_metric_values").paginate(
        thingName=thing, metricName=metric, startTime=now - dt.timedelta(hours=1), endTime=now + dt.timedelta(minutes=5))
    return [d["value"] for page in pages for d in page["metricDatumList"]]


def assert_accepted(device: Device, report_id: int) -> None:
    topic, reply = device.report(json.loads(network(report_id, 5)))
    assert topic == "json/accepted", reply


def fleet(service, prefix: str, size: int) -> list[Device]:
    return [Device(service.mqtt_port, f"{prefix}-{uuid.uuid4().hex[:6]}-{n}") for n in range(size)]


def burst(bad: Device, bad_payloads: list[bytes], others: list[Device]) -> None:
    """Everyone publishes at once, so the bad reports share write batches with the others'."""
    for n, device in enumerate(others):
        device.client.publish(f"$aws/things/{device.thing}/defender/metrics/json", network(1, 1000 + n), qos=1)
        if n < len(bad_payloads):
            bad.client.publish(f"$aws/things/{bad.thing}/defender/metrics/json", bad_payloads[n], qos=1)


def test_a_count_past_64_bits_costs_no_other_device_its_report(service, iot):
    bad = Device(service.mqtt_port, f"wide-{uuid.uuid4().hex[:6]}")
    others = fleet(service, "peer", 15)
    burst(bad, [network(1, 10**30)], others)
    topic, reply = bad.reply()
    assert topic == "json/rejected" and reply["statusDetails"]["ErrorCode"] == "InvalidPayload"
    assert "bytes_in" in reply["statusDetails"]["ErrorMessage"] and reply["reportId"] == 1
    for n, device in enumerate(others):
        assert device.reply()[0] == "json/accepted"
        assert stored(iot, device.thing) == [{"count": 1000 + n}]
    assert not bad.disconnected
    for device in [bad, *others]:
        device.close()


def test_window_sums_past_64_bits_saturate(service, iot):
    """Two reports of 2^63-1 inside durationSeconds: their sum used to fail the whole batch."""
    bad = Device(service.mqtt_port, f"sum-{uuid.uuid4().hex[:6]}")
    others = fleet(service, "near", 15)
    burst(bad, [network(1, COUNT_MAX), network(2, COUNT_MAX)], others)
    assert [bad.reply()[0], bad.reply()[0]] == ["json/accepted", "json/accepted"]
    for device in others:
        assert device.reply()[0] == "json/accepted"
    assert stored(iot, bad.thing) == [{"count": COUNT_MAX}, {"count": COUNT_MAX}]
    for device in [bad, *others]:
        device.close()


HOSTILE = {
    "invalid UTF-8": b'{"header":{"report_id":5,"version":"1.0"},"metrics":{"listening_tcp_ports":'
                     b'{"ports":[{"port":22,"interface":"\xff\xfe"}]}}}',
    "report id past 64 bits": b'{"header":{"report_id":18446744073709551616,"version":"1.0"},"metrics":{}}',
    "nested 20k deep": b'{"header":{"report_id":5,"version":"1.0"},"metrics":' + b"[" * 20000 + b"]" * 20000 + b"}",
}


def test_a_packet_past_the_brokers_limit_closes_its_connection_and_costs_no_one_else(service, iot):
    """A 4 MB PUBLISH on the device's own report topic: Mosquitto used to read it whole and hand it
    on (answered ``PayloadTooLarge`` seconds later; at 200 MB the service's own connection lost its
    heartbeat and other devices' reports went unanswered). Now the connection closes at its header."""
    big, honest = fleet(service, "oversize", 2)
    big.client.publish(f"$aws/things/{big.thing}/defender/metrics/json", b"{" + b" " * (4 * 1024 * 1024) + b"}", qos=1)
    deadline = time.monotonic() + 10
    while not big.disconnected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert big.disconnected
    assert big.replies.empty(), "the oversized packet was read and answered"
    assert_accepted(honest, 1)
    for device in (big, honest):
        device.close()


def test_replies_that_quote_a_huge_name_reach_their_device_and_cost_no_one_else(service, iot):
    """Ten reports at once, each naming an unknown custom metric of 120,000 characters: each
    rejection quoted the name, the replies of one loop pass went as one 1.2 MB message, and the
    broker closed the service's own connection for it (256 KiB packets at most), so these replies
    and every other device's answers of the moment were lost (an outside-in test)."""
    noisy, honest = fleet(service, "bigname", 2)
    for report_id in range(1, 11):
        noisy.client.publish(f"$aws/things/{noisy.thing}/defender/metrics/json", json.dumps(
            {"header": {"report_id": report_id, "version": "1.0"},
             "custom_metrics": {"m" * 120_000: [{"number": 1}]}}).encode(), qos=1)
    codes = Counter(noisy.reply(timeout=15)[1]["statusDetails"]["ErrorCode"] for _ in range(10))
    assert sum(codes.values()) == 10, codes  # every one answered (rejected: unknown metric, or throttled)
    longest = max(len(line) for line in service.log_path.read_text(errors="replace").splitlines())
    assert longest < 10_000, longest  # the rejection's log line quotes the name cut short too
    assert_accepted(honest, 1)
    for device in (noisy, honest):
        device.close()


ANSWERED_THROTTLED = 'iotdefender_mqtt_reports_rejected_by_broker_total{code="Throttled"}'


def metric_total(service, name: str) -> float:
    return metric_sample(service.endpoint, name)


def throttled_total(service) -> float:
    return metric_total(service, "iotdefender_mqtt_publishes_throttled_total")


def test_a_connection_past_its_publish_rate_has_the_rest_dropped_and_stays_connected(service, iot):
    """2,000 messages at once from one connection: at most ``--mqtt-publish-rate`` (100) a second
    pass, the others are dropped and counted, as AWS IoT Core drops a connection's publishes past
    its 100 a second; the device stays connected and its next report, a second later, is answered.
    One device flooding used to cost other devices' reports their answers (an outside-in test)."""
    flooder, honest = fleet(service, "rate", 2)
    before = throttled_total(service)
    for n in range(2000):
        flooder.client.publish(f"telemetry/{flooder.thing}", b"x", qos=0)
    time.sleep(1.5)
    dropped = throttled_total(service) - before
    assert 1000 <= dropped <= 1900, dropped  # the burst (100) and the refill while they arrived passed
    assert not flooder.disconnected
    for device in (flooder, honest):
        assert_accepted(device, 1)
    for device in (flooder, honest):
        device.close()


@pytest.mark.parametrize("encoding", ["json", "cbor"])
def test_a_thing_flooding_its_reports_is_answered_by_the_broker_past_those_waiting(service, iot, encoding):
    """100 reports at once from one thing (what the publish rate lets through in a second): the
    broker hands the service at most 32 of a thing's reports awaiting their answers and answers the
    others itself, ``rejected`` Throttled, with the report's id as the service would give it.
    Every report is answered once, and the other device's report is accepted meanwhile. A few
    devices flooding so used to fill the service's connection until the broker dropped whole
    batches, other devices' reports among them: acknowledged, never answered (an outside-in test)."""
    flooder, honest = fleet(service, f"flood-{encoding}", 2)
    shed_before = metric_total(service, ANSWERED_THROTTLED)
    for report_id in range(1, 101):
        document = json.loads(network(report_id, 5))
        payload = json.dumps(document).encode() if encoding == "json" else cbor2.dumps(document)
        flooder.client.publish(f"$aws/things/{flooder.thing}/defender/metrics/{encoding}", payload, qos=0)
    replies = [flooder.reply(timeout=15) for _ in range(100)]
    time.sleep(0.5)
    assert flooder.replies.empty(), "a report was answered twice"
    # The service's answers here are accepted ones (no minimum interval); the broker's are Throttled.
    by_broker = [(topic, body) for topic, body in replies
                 if body.get("statusDetails", {}).get("ErrorMessage", "").startswith("Too many of this thing's reports")]
    assert by_broker, "the service was handed all 100 at once"
    assert sorted(body.get("reportId") for _, body in replies) == list(range(1, 101)), \
        "each report answered once, with its id (the broker's answers too)"
    for topic, body in by_broker:
        assert topic == f"{encoding}/rejected"
        assert body["thingName"] == flooder.thing and body["status"] == "REJECTED"
        assert body["statusDetails"]["ErrorCode"] == "Throttled", body
        assert abs(body["timestamp"] - time.time() * 1000) < 60_000
    deadline = time.monotonic() + 5  # counted from the broker's next batch of events
    while metric_total(service, ANSWERED_THROTTLED) - shed_before < len(by_broker):
        assert time.monotonic() < deadline, "the reports answered by the broker were not counted"
        time.sleep(0.05)
    assert metric_total(service, ANSWERED_THROTTLED) - shed_before == len(by_broker)
    assert_accepted(honest, 1)
    for device in (flooder, honest):
        device.close()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_payloads_are_rejected_and_the_session_survives(service, iot, case):
    device = Device(service.mqtt_port, f"hostile-{uuid.uuid4().hex[:6]}")
    device.publish(HOSTILE[case])
    topic, reply = device.reply()
    assert topic == "json/rejected" and reply["statusDetails"]["ErrorCode"] == "InvalidPayload"
    assert not device.disconnected
    device.publish(network(6, 1))  # the same session goes on
    assert device.reply()[0] == "json/accepted"
    device.close()


# -- a live fuzz: every report gets exactly one reply and the service survives -------------------
documents = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12)
report_like = st.fixed_dictionaries({
    "header": st.fixed_dictionaries({"report_id": st.integers(-5, 2**65), "version": st.just("1.0")}),
    "metrics": st.fixed_dictionaries({}, optional={
        "network_stats": st.dictionaries(st.sampled_from(["bytes_in", "bytes_out", "packets_in"]),
                                         st.integers(-1, 2**70) | documents, max_size=3),
        "listening_tcp_ports": st.fixed_dictionaries({"ports": st.lists(
            st.fixed_dictionaries({"port": st.integers(-1, 70000) | documents}), max_size=3)})}),
    "custom_metrics": st.dictionaries(st.sampled_from(["labels", "unknown"]), documents, max_size=2)})
payloads = st.one_of(
    st.binary(max_size=200).map(lambda b: ("json", b)),
    st.tuples(st.sampled_from(["json", "cbor"]), documents | report_like).map(
        lambda t: (t[0], json.dumps(t[1]).encode() if t[0] == "json" else cbor2.dumps(t[1]))),
    st.tuples(st.integers(1, 30000), st.sampled_from([b"[", b"{\"a\":"])).map(
        lambda t: ("json", b'{"header":{"report_id":3,"version":"1.0"},"metrics":' + t[1] * t[0])),
)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=payloads)
def test_live_fuzz_every_report_gets_exactly_one_reply(service, iot, fuzz_device, payload):
    encoding, body = payload
    FUZZ["tried"] += 1
    fuzz_device.publish(body, encoding)
    topic, reply = fuzz_device.reply(timeout=10)
    assert topic.startswith(encoding + "/") and reply["status"] in ("ACCEPTED", "REJECTED")
    assert reply["thingName"] == fuzz_device.thing
    assert fuzz_device.replies.empty() and not fuzz_device.disconnected
    FUZZ["answered_once"] += 1
    FUZZ[reply["status"].lower()] += 1


FUZZ: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_device(service):
    device = Device(service.mqtt_port, f"fuzz-{uuid.uuid4().hex[:6]}")
    yield device
    time.sleep(0.5)
    assert device.replies.empty(), "a report was answered twice"
    device.close()
    assert plain_http.get(service.endpoint + "/healthz").status_code == 200
    publish_figures(f"live-fuzz-{'postgresql' if service.database_url else 'sqlite'}", dict(FUZZ))
    FUZZ.clear()
