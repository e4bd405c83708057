"""AWS's own Python Device Defender agent, unmodified, over mutual TLS against the service's broker.

The agent (PyPI AWSIoTDeviceDefenderAgentSDK) connects with awscrt's mtls_from_path, which dials
port 443 with ALPN "x-amzn-mqtt-ca" (8883 only where ALPN is unavailable), as devices reach AWS IoT;
the service binds its TLS listener to 443 on a loopback address of its own.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import ssl
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from tests.support.certificates import Pki
from tests.support.mqtt import stop_network_loop
from tests.support.processes import ServiceProcess, free_port


@pytest.fixture(scope="module")
def tls_service(tmp_path_factory):
    address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    pki = Pki(tmp_path_factory.mktemp("pki"), address)
    service = ServiceProcess(
        data_dir=tmp_path_factory.mktemp("svc"), host=address, port=free_port(),
        extra_args=["--mqtt-auth", "cert", "--mqtt-tls-port", "443", "--mqtt-ca", str(pki.ca_cert),
                    "--mqtt-cert", str(pki.server_cert), "--mqtt-key", str(pki.server_key),
                    "--report-min-interval", "1"])
    service.start()
    yield service, pki, address
    service.stop()


def test_unmodified_aws_agent_gets_accepted_replies(tls_service):
    service, pki, address = tls_service
    iot = service.client()
    iot.create_custom_metric(metricName="cpu_usage", metricType="number")
    iot.create_security_profile(
        securityProfileName="agent-profile",
        behaviors=[{"name": "cpu", "metric": "cpu_usage",
                    "criteria": {"comparisonOperator": "less-than", "value": {"number": 101}}}],
        additionalMetricsToRetainV2=[{"metric": "aws:num-listening-tcp-ports"}, {"metric": "aws:all-bytes-in"}])
    iot.attach_security_profile(securityProfileName="agent-profile",
                                securityProfileTargetArn="arn:aws:iot:us-east-1:123456789012:all/things")
    cert, key = pki.issue("agent-thing")
    # Where to connect, found as AWS's samples find it: the host the API was reached at.
    endpoint = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    assert endpoint == address
    agent = subprocess.Popen(
        [sys.executable, "-m", "AWSIoTDeviceDefenderAgentSDK.agent", "-e", endpoint, "-r", str(pki.ca_cert),
         "-c", str(cert), "-k", str(key), "-id", "agent-thing", "-f", "json", "-i", "2", "-cm"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    accepted, output = [], []
    deadline = time.time() + 40
    try:
        while time.time() < deadline and len(accepted) < 2:
            line = agent.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("{") and '"status"' in line:
                accepted.append(json.loads(line))
    finally:
        agent.terminate()
        agent.wait(10)
    assert len(accepted) >= 2, "".join(output)[-3000:]
    assert all(r["status"] == "ACCEPTED" and r["thingName"] == "agent-thing" for r in accepted), accepted
    now = dt.datetime.now(dt.timezone.utc)
    window = {"thingName": "agent-thing", "startTime": now - dt.timedelta(minutes=5), "endTime": now}
    cpu = iot.list_metric_values(metricName="cpu_usage", **window)["metricDatumList"]
    ports = iot.list_metric_values(metricName="aws:num-listening-tcp-ports", **window)["metricDatumList"]
    assert len(cpu) >= 2 and all(0 <= d["value"]["number"] <= 100 for d in cpu)
    assert len(ports) >= 2 and all(d["value"]["count"] >= 0 for d in ports)


def _tls_client(pki: Pki, client_id: str, cert=None) -> tuple[mqtt.Client, list[int]]:
    codes: list[int] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_connect = lambda c, u, f, reason, p: codes.append(reason.value)
    # With TLS 1.3 the client finishes its handshake before the server checks the certificate:
    # a connection closed before any CONNACK was refused during the handshake.
    client.on_disconnect = lambda c, u, f, reason, p: codes.append(-1) if not codes else None
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    if cert is not None:
        context.load_cert_chain(*map(str, cert))
    client.tls_set_context(context)
    return client, codes


@pytest.mark.parametrize("case", ["other-name", "no-certificate"])
def test_certificate_must_match_the_client_id(tls_service, case):
    service, pki, address = tls_service
    cert = pki.issue("device-a") if case == "other-name" else None
    client, codes = _tls_client(pki, "device-b", cert)
    try:
        client.connect(address, 443)
        client.loop_start()
        deadline = time.time() + 5
        while not codes and time.time() < deadline:
            time.sleep(0.05)
    except (ssl.SSLError, OSError):
        codes.append(-1)  # refused during the handshake: just as refused
    finally:
        stop_network_loop(client)
    assert codes and codes[0] != 0, codes


def test_matching_certificate_connects(tls_service):
    service, pki, address = tls_service
    client, codes = _tls_client(pki, "device-c", pki.issue("device-c"))
    client.connect(address, 443)
    client.loop_start()
    deadline = time.time() + 5
    while not codes and time.time() < deadline:
        time.sleep(0.05)
    stop_network_loop(client)
    client.disconnect()
    assert codes == [0]
