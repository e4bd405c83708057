"""What operators read on ``/metrics`` of a node (issue #14, "Operable"), moved by a live service.

One single-box service (every role; the detection worker, a child process, stores the batches)
driven only by paho-mqtt devices and boto3; each series is read back from ``/metrics`` and must
have moved by exactly what was done: connected clients up and down with the open connections,
one answer latency per report by outcome, the reports of the detect transactions, API calls by
their operation and status code, and the node's info series.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable

import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from iotdefender import __version__
from tests.support.mqtt import Device, report
from tests.support.processes import ServiceProcess, wait_for
from tests.support import plain_http


def samples(endpoint: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``: (name, labels) -> value."""
    text = plain_http.get(endpoint + "/metrics").text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(endpoint: str, name: str, **labels: str) -> float:
    return samples(endpoint).get((name, frozenset(labels.items())), 0.0)


def since(endpoint: str) -> Callable[..., float]:
    """How much a sample (name, labels) moved from now to when the returned function is called."""
    before = samples(endpoint)

    def moved(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return samples(endpoint).get(key, 0.0) - before.get(key, 0.0)
    return moved


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = ServiceProcess(data_dir=tmp_path_factory.mktemp("node-metrics"),
                         extra_args=["--report-min-interval", "0"])
    svc.start()
    yield svc
    svc.stop()


def test_the_node_says_what_it_is(service):
    info = [labels for (name, labels) in samples(service.endpoint) if name == "iotdefender_node_info"]
    assert len(info) == 1
    labels = dict(info[0])
    assert labels["roles"] == "broker,api,detect" and labels["version"] == __version__ and labels["node"]


def test_connected_clients_follow_the_open_connections(service):
    connected = "iotdefender_mqtt_connected_clients"
    assert value(service.endpoint, connected) == 0  # the service's own connection to its broker is not a client
    devices = [Device(service.mqtt_port, f"conn-{i}-{uuid.uuid4().hex[:6]}") for i in range(3)]
    try:
        wait_for(lambda: value(service.endpoint, connected) == 3, 5, "3 connected clients")
        # The same client id connecting again takes the session over: still 3, not 4 (the first
        # connection's reconnect is put off, or the two would take it from each other in turns).
        devices[0].client.reconnect_delay_set(min_delay=60, max_delay=60)
        again = Device(service.mqtt_port, devices[0].client._client_id.decode())
        devices.append(again)
        wait_for(lambda: devices[0].disconnected, 5, "the first connection taken over")
        assert value(service.endpoint, connected) == 3
        devices[1].close()
        wait_for(lambda: value(service.endpoint, connected) == 2, 5, "2 connected clients after a disconnect")
    finally:
        for device in devices:
            device.close()
    wait_for(lambda: value(service.endpoint, connected) == 0, 5, "no connected client")


def test_each_report_is_timed_from_receipt_to_answer_and_counted_in_its_transaction(service):
    moved = since(service.endpoint)
    devices = [Device(service.mqtt_port, f"lat-{i}-{uuid.uuid4().hex[:6]}") for i in range(3)]
    try:
        for report_id in (1, 2):
            for device in devices:
                assert device.report(report(report_id, ports=[22]))[0] == "json/accepted"
        devices[0].publish(b"{not json")
        assert devices[0].reply()[0] == "json/rejected"
    finally:
        for device in devices:
            device.close()
    assert moved("iotdefender_report_answer_seconds_count", outcome="accepted") == 6
    assert moved("iotdefender_report_answer_seconds_count", outcome="rejected") == 1
    # Every answer within the largest bucket on an idle box, and no latency below 0.
    assert moved("iotdefender_report_answer_seconds_bucket", outcome="accepted", le="10.0") == 6
    assert moved("iotdefender_report_answer_seconds_sum", outcome="accepted") > 0
    # The reports were stored by the detection worker (a child process): its transactions are
    # observed here. Each device waited for its answer, so the 6 reports took 1 to 6 transactions.
    assert moved("iotdefender_detect_transaction_reports_sum") == 6
    transactions = moved("iotdefender_detect_transaction_seconds_count")
    assert 1 <= transactions <= 6
    assert moved("iotdefender_detect_transaction_reports_count") == transactions
    assert moved("iotdefender_detect_transaction_seconds_sum") > 0


def test_api_requests_are_counted_by_operation_and_status(service):
    moved = since(service.endpoint)
    iot = service.client()
    iot.list_security_profiles()
    iot.list_security_profiles()
    with pytest.raises(ClientError):
        iot.describe_security_profile(securityProfileName=f"missing-{uuid.uuid4().hex[:6]}")
    with pytest.raises(ClientError):
        service.client(secret="not-the-secret").list_security_profiles()
    assert plain_http.get(service.endpoint + "/console/login").status_code == 200
    assert plain_http.get(service.endpoint + f"/console/no-such-page-{uuid.uuid4().hex[:6]}").status_code in (303, 307, 404)

    assert moved("iotdefender_http_requests_total", operation="ListSecurityProfiles", code="200") == 2
    assert moved("iotdefender_http_requests_total", operation="DescribeSecurityProfile", code="404") == 1
    assert moved("iotdefender_http_request_seconds_count", operation="ListSecurityProfiles") == 2
    assert moved("iotdefender_http_requests_total", operation="unknown", code="403") == 1  # refused before routing
    assert moved("iotdefender_http_request_seconds_count", operation="console") == 2
    # Bounded labels: operation names, never a path a client chose.
    operations = {dict(labels)["operation"] for name, labels in samples(service.endpoint)
                  if name == "iotdefender_http_requests_total"}
    assert not any("missing-" in op or "no-such-page" in op or op.startswith("/") for op in operations), operations
    assert json.loads(plain_http.get(service.endpoint + "/healthz").text)["status"] == "ok"


def test_a_client_that_leaves_before_its_body_is_no_internal_failure(service):
    """A request whose client closes the connection before its body arrived is the client's doing:
    counted as 499 (nginx's "client closed request"), never as a 500 with an error logged, which
    anyone could send by the thousand (50 such requests were 50 counted 500s and 50 tracebacks)."""
    moved = since(service.endpoint)
    host, port = service.endpoint.removeprefix("http://").split(":")
    for path in ["/security-profiles/x"] * 3 + ["/console/login"]:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                         "Content-Length: 1000\r\n\r\n{".encode())
    wait_for(lambda: moved("iotdefender_http_requests_total", operation="unknown", code="499") == 3
             and moved("iotdefender_http_requests_total", operation="console", code="499") == 1, 10,
             "the four requests counted")
    assert moved("iotdefender_http_requests_total", operation="unknown", code="500") == 0
    assert moved("iotdefender_http_requests_total", operation="console", code="500") == 0
    assert service.log_path is not None and "internal_failure" not in service.log_path.read_text()
    assert service.client().list_security_profiles()["ResponseMetadata"]["HTTPStatusCode"] == 200
