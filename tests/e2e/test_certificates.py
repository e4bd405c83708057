"""Device certificates through boto3, enforced by the broker on real TLS connections.

The operator's answer to a compromised device, as on AWS IoT: UpdateCertificate to INACTIVE or
REVOKED closes the device's connection and refuses its next CONNECTs, while other devices go on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import queue
import re
import ssl
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.certificates import Pki
from tests.support.metrics import metric_sample
from tests.support.mqtt import mqtt_denials, stop_network_loop
from tests.support.processes import ServiceProcess, free_port, wait_for


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def tls_service(request, tmp_path_factory):
    pki = Pki(tmp_path_factory.mktemp("pki"), "127.0.0.1")
    url = request.getfixturevalue("postgres").create_database(f"certs{time.time_ns()}") \
        if request.param == "postgresql" else None
    tls_port = free_port()
    service = ServiceProcess(data_dir=tmp_path_factory.mktemp("svc"), database_url=url, extra_args=[
        "--mqtt-auth", "cert", "--mqtt-tls-port", str(tls_port), "--mqtt-ca", str(pki.ca_cert),
        "--mqtt-cert", str(pki.server_cert), "--mqtt-key", str(pki.server_key), "--report-min-interval", "0",
        "--mqtt-ca-key", str(pki.ca_key)])
    service.start()
    yield service, pki, tls_port
    service.stop()


class TlsDevice:
    """A device connected with its own certificate; ``refused`` holds the CONNACK's reason when
    the broker refused it."""

    def __init__(self, port: int, pki: Pki, name: str, files: tuple[Path, Path] | None = None) -> None:
        self.name = name
        self.closed, self.connack = False, queue.Queue()
        self.replies: queue.Queue[dict] = queue.Queue()
        cert, key = files or pki.issue(name)
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(cert), str(key))
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, reconnect_on_failure=False)
        self.client.tls_set_context(context)
        self.client.on_connect = lambda c, u, f, reason, p: self.connack.put(reason.value)
        self.client.on_disconnect = lambda *a: setattr(self, "closed", True)
        self.client.on_message = lambda c, u, m: self.replies.put(json.loads(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.reason = self.connack.get(timeout=10)
        if self.reason == 0:
            self.client.subscribe(f"$aws/things/{name}/defender/metrics/json/+", qos=1)
        else:
            stop_network_loop(self.client)

    def report(self, report_id: int) -> str:
        """The status of the service's answer to one report."""
        document = {"header": {"report_id": report_id, "version": "1.0"},
                    "metrics": {"tcp_connections": {"established_connections": {"total": 1}}}}
        self.client.publish(f"$aws/things/{self.name}/defender/metrics/json", json.dumps(document), qos=1)
        return self.replies.get(timeout=10)["status"]

    def close(self) -> None:
        self.client.disconnect()
        stop_network_loop(self.client)


def self_signed(common_name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def certificate_id(cert: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


def test_a_certificate_no_longer_active_is_cut_off_and_refused(tls_service):
    service, pki, port = tls_service
    iot = service.client()
    files = pki.issue("cut-off")
    device, bystander = TlsDevice(port, pki, "cut-off", files), TlsDevice(port, pki, "bystander")
    assert (device.reason, bystander.reason) == (0, 0)
    assert device.report(1) == "ACCEPTED"

    registered = iot.register_certificate(certificatePem=files[0].read_text(),
                                          caCertificatePem=pki.ca_cert.read_text(), status="ACTIVE")
    cert_id = certificate_id(files[0])
    assert registered["certificateId"] == cert_id  # AWS's id: SHA-256 of the DER encoding
    assert registered["certificateArn"] == f"arn:aws:iot:us-east-1:123456789012:cert/{cert_id}"
    time.sleep(0.5)
    assert not device.closed and device.report(2) == "ACCEPTED"  # ACTIVE: nothing changes

    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
    wait_for(lambda: device.closed, 5, "the inactive certificate's connection closed")
    stop_network_loop(device.client)
    assert TlsDevice(port, pki, "cut-off", files).reason == 135  # Not authorized (MQTT 3.1.1 rc 5)
    assert not bystander.closed and bystander.report(1) == "ACCEPTED"

    iot.update_certificate(certificateId=cert_id, newStatus="ACTIVE")
    connected: list[TlsDevice] = []
    wait_for(lambda: connected.append(attempt := TlsDevice(port, pki, "cut-off", files)) or attempt.reason == 0, 5,
             "the certificate accepted again")
    device = connected[-1]
    assert device.report(3) == "ACCEPTED"

    iot.update_certificate(certificateId=cert_id, newStatus="REVOKED")
    wait_for(lambda: device.closed, 5, "the revoked certificate's connection closed")
    stop_network_loop(device.client)
    with pytest.raises(iot.exceptions.CertificateStateException):
        iot.update_certificate(certificateId=cert_id, newStatus="ACTIVE")
    described = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
    assert described["status"] == "REVOKED" and described["customerVersion"] == 4
    assert described["caCertificateId"] == certificate_id(pki.ca_cert)

    # Deleted, it is unknown to the API and still refused: the CA's signature alone would let it in.
    iot.delete_certificate(certificateId=cert_id)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_certificate(certificateId=cert_id)
    assert TlsDevice(port, pki, "cut-off", files).reason == 135

    # A certificate it does not know is the CA's to decide; a new one for the same thing connects.
    replacement = TlsDevice(port, pki, "cut-off")
    assert replacement.reason == 0 and replacement.report(4) == "ACCEPTED"
    for open_device in (replacement, bystander):
        open_device.close()


def test_a_leaked_certificate_registered_as_revoked_never_connects_and_a_restart_keeps_it(tls_service):
    service, pki, port = tls_service
    iot = service.client()
    files = pki.issue("leaked")
    device = TlsDevice(port, pki, "leaked", files)
    assert device.reason == 0
    iot.register_certificate_without_ca(certificatePem=files[0].read_text(), status="REVOKED")
    wait_for(lambda: device.closed, 5, "the leaked certificate's connection closed")
    stop_network_loop(device.client)
    service.restart()
    assert TlsDevice(port, pki, "leaked", files).reason == 135
    described = iot.describe_certificate(certificateId=certificate_id(files[0]))["certificateDescription"]
    assert (described["status"], described["certificateMode"]) == ("REVOKED", "SNI_ONLY")
    assert "caCertificateId" not in described


def test_certificate_operations_answer_as_aws_does(tls_service):
    service, pki, _port = tls_service
    iot = service.client()
    pems = [pki.issue(f"listed-{n}")[0].read_text() for n in range(5)]
    ids = [iot.register_certificate_without_ca(certificatePem=pem)["certificateId"] for pem in pems]
    # Without a status, a registered certificate is INACTIVE (RegisterCertificate's setAsActive too).
    assert {iot.describe_certificate(certificateId=i)["certificateDescription"]["status"] for i in ids} == {"INACTIVE"}
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.register_certificate_without_ca(certificatePem=pems[0])
    with pytest.raises(iot.exceptions.CertificateValidationException):
        iot.register_certificate_without_ca(certificatePem="-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----")
    (pki.root / "other").mkdir()
    other_ca = Pki(pki.root / "other", "127.0.0.1")
    with pytest.raises(iot.exceptions.CertificateValidationException):
        iot.register_certificate(certificatePem=other_ca.issue("stranger")[0].read_text(),
                                 caCertificatePem=pki.ca_cert.read_text())
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_certificate(certificateId="0" * 64)
    # A common name with a NUL (no client can have it; PostgreSQL cannot store it) is registered.
    odd = iot.register_certificate_without_ca(certificatePem=self_signed("a\x00b"), status="REVOKED")
    assert iot.describe_certificate(certificateId=odd["certificateId"])["certificateDescription"]["status"] == "REVOKED"
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.update_certificate(certificateId=ids[0], newStatus="PENDING_TRANSFER")
    active = iot.register_certificate(certificatePem=pki.issue("kept")[0].read_text(), setAsActive=True)
    with pytest.raises(iot.exceptions.CertificateStateException):
        iot.delete_certificate(certificateId=active["certificateId"])

    # Newest first unless asked; every page continues where the last ended.
    for ascending in (False, True):
        listed = [c for page in iot.get_paginator("list_certificates").paginate(
            ascendingOrder=ascending, PaginationConfig={"PageSize": 2}) for c in page["certificates"]]
        mine = [c["certificateId"] for c in listed if c["certificateId"] in ids]
        assert mine == (ids if ascending else ids[::-1])
        assert len({c["certificateId"] for c in listed}) == len(listed)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.list_certificates(pageSize=2, marker="bogus")


@pytest.mark.parametrize("certificates", ["signed", "registered"])
def test_a_certificate_updated_through_one_node_is_cut_off_on_another(jetstream, postgres, tmp_path, certificates):
    """Cluster mode: every broker node refuses what any api node was told (a NATS notice; each
    node's Mosquitto holds the list); under ``--mqtt-certificates registered`` every node lets in
    a certificate registered ACTIVE through any of them."""
    pki = Pki(tmp_path, "127.0.0.1")
    url = postgres.create_database(f"certcluster{time.time_ns()}")
    nodes, tls_ports = [], []
    for name in ("a", "b"):
        tls_ports.append(free_port())
        nodes.append(ServiceProcess(data_dir=tmp_path / name, database_url=url, extra_args=[
            "--cluster-url", jetstream.urls[0], "--mqtt-auth", "cert", "--mqtt-tls-port", str(tls_ports[-1]),
            "--mqtt-ca", str(pki.ca_cert), "--mqtt-cert", str(pki.server_cert), "--mqtt-key", str(pki.server_key),
            "--report-min-interval", "0", "--mqtt-certificates", certificates, "--mqtt-ca-key", str(pki.ca_key)]))
    for node in nodes:
        node.start()
    try:
        files = pki.issue("roaming")
        iot = nodes[0].client()
        if certificates == "registered":
            assert TlsDevice(tls_ports[1], pki, "roaming", files).reason == 135  # not registered yet
            cert_id = iot.register_certificate(certificatePem=files[0].read_text(), status="ACTIVE")["certificateId"]
            connected: list[TlsDevice] = []
            wait_for(lambda: connected.append(attempt := TlsDevice(tls_ports[1], pki, "roaming", files))
                     or attempt.reason == 0, 5, "node b let in the certificate registered through node a")
            device = connected[-1]
        else:
            device = TlsDevice(tls_ports[1], pki, "roaming", files)
            assert device.reason == 0
        wait_for(lambda: device.report(1) == "ACCEPTED", 20, "a report accepted through node b")
        if certificates == "signed":
            cert_id = iot.register_certificate(certificatePem=files[0].read_text(), status="ACTIVE")["certificateId"]
        iot.update_certificate(certificateId=cert_id, newStatus="REVOKED")
        wait_for(lambda: device.closed, 5, "node b closed the revoked certificate's connection")
        stop_network_loop(device.client)
        for port in tls_ports:
            assert TlsDevice(port, pki, "roaming", files).reason == 135
        # A node that starts afterwards reads the lists before its first CONNECT.
        other = pki.issue("other")
        other_arn = iot.register_certificate(certificatePem=other[0].read_text(), status="ACTIVE")["certificateArn"]
        nodes[1].restart()
        assert TlsDevice(tls_ports[1], pki, "roaming", files).reason == 135
        let_in = TlsDevice(tls_ports[1], pki, "other", other)
        assert let_in.reason == 0
        # Attached to a thing through node a, it connects as that thing on node b, and no longer
        # by its common name.
        iot.create_thing(thingName="pump-1")
        iot.attach_thing_principal(thingName="pump-1", principal=other_arn)
        wait_for(lambda: let_in.closed, 5, "node b closed the connection under the common name")
        stop_network_loop(let_in.client)
        wait_for(lambda: (attempt := TlsDevice(tls_ports[1], pki, "pump-1", other)).reason == 0
                 and (attempt.close() or True), 5, "node b let the certificate in as the thing it is attached to")
        # A certificate node a creates (CreateKeysAndCertificate) and attaches connects on node b.
        made = iot.create_keys_and_certificate(setAsActive=True)
        created = (tmp_path / "created.pem", tmp_path / "created.key")
        created[0].write_text(made["certificatePem"])
        created[1].write_text(made["keyPair"]["PrivateKey"])
        iot.create_thing(thingName="pump-2")
        iot.attach_thing_principal(thingName="pump-2", principal=made["certificateArn"])
        wait_for(lambda: (attempt := TlsDevice(tls_ports[1], pki, "pump-2", created)).reason == 0
                 and (attempt.close() or True), 5, "node b let in the certificate node a created")
    finally:
        for node in nodes:
            node.stop()


def test_the_console_cuts_a_device_off_from_its_page(tls_service):
    """The device page lists the certificates registered with the thing's name; its buttons are
    UpdateCertificate, behind the session and the CSRF token."""
    from tests.e2e.test_console_http import logged_in

    service, pki, port = tls_service
    client, token = logged_in(service)
    iot = service.client()
    files = pki.issue("console-cut")
    device = TlsDevice(port, pki, "console-cut", files)
    assert device.report(1) == "ACCEPTED"
    cert_id = iot.register_certificate(certificatePem=files[0].read_text(), status="ACTIVE")["certificateId"]
    page = client.get("/console/things/console-cut")
    assert page.status_code == 200 and f'data-certificate="{cert_id}"' in page.text
    assert ">Deactivate</button>" in page.text and ">Revoke</button>" in page.text

    action = f"/console/certificates/{cert_id}/status"
    assert client.post(action, data={"newStatus": "INACTIVE", "thing": "console-cut"}).status_code == 403
    refused = client.post(action, data={"csrf": token, "newStatus": "PENDING_TRANSFER", "thing": "console-cut"})
    assert refused.status_code == 400 and "InvalidRequestException" in refused.text
    assert not device.closed
    done = client.post(action, data={"csrf": token, "newStatus": "INACTIVE", "thing": "console-cut"})
    assert done.status_code == 303 and done.headers["location"] == "/console/things/console-cut"
    wait_for(lambda: device.closed, 5, "the deactivated certificate's connection closed")
    stop_network_loop(device.client)
    page = client.get("/console/things/console-cut")
    assert '<td class="status">INACTIVE</td>' in page.text and ">Activate</button>" in page.text
    assert client.post(action, data={"csrf": token, "newStatus": "REVOKED", "thing": "console-cut"}).status_code == 303
    page = client.get("/console/things/console-cut")
    assert '<td class="status">REVOKED</td>' in page.text and "</button></form>" not in page.text.split('id="certificates"')[1].split("</table>")[0]
    unknown = client.post(f"/console/certificates/{'f' * 64}/status", data={"csrf": token, "newStatus": "INACTIVE"})
    assert unknown.status_code == 404


def test_a_list_of_more_certificates_than_mqtt_packet_ids_still_lets_devices_in(tmp_path):
    """The list is given to the broker at each start: one QoS 1 message a certificate ran out of the
    service's 65,535 packet ids, its "ready" never went, and no device could connect."""
    import secrets

    from iotdefender.store.database import create_engine, sqlite_url
    from iotdefender.store.schema import certificates

    pki = Pki(tmp_path, "127.0.0.1")
    tls_port = free_port()
    service = ServiceProcess(data_dir=tmp_path / "svc", extra_args=[
        "--mqtt-auth", "cert", "--mqtt-tls-port", str(tls_port), "--mqtt-ca", str(pki.ca_cert),
        "--mqtt-cert", str(pki.server_cert), "--mqtt-key", str(pki.server_key), "--report-min-interval", "0"])
    service.start()
    try:
        files = pki.issue("listed-last")
        service.client().register_certificate(certificatePem=files[0].read_text(), status="REVOKED")
        service.stop()
        engine = create_engine(sqlite_url(tmp_path / "svc"))
        with engine.begin() as conn:
            conn.execute(certificates.insert(), [
                {"certificate_id": secrets.token_hex(32), "arn": "arn", "pem": "-", "common_name": f"gone{n}",
                 "status": "REVOKED", "certificate_mode": "SNI_ONLY", "not_before": 0, "not_after": 0,
                 "customer_version": 1, "generation_id": "-", "creation_date": 0, "last_modified_date": 0}
                for n in range(70_000)])
        engine.dispose()
        service.start()
        device = TlsDevice(tls_port, pki, "unlisted")
        assert device.reason == 0 and device.report(1) == "ACCEPTED"
        assert TlsDevice(tls_port, pki, "listed-last", files).reason == 135
        device.close()
    finally:
        service.stop()


def test_under_registered_only_a_certificate_connects_once_registered_active(tmp_path):
    """``--mqtt-certificates registered``: as on AWS IoT, a certificate the CA signed connects only
    once registered ACTIVE; one made INACTIVE is cut off, and the lists survive a restart."""
    pki = Pki(tmp_path, "127.0.0.1")
    tls_port = free_port()
    service = ServiceProcess(data_dir=tmp_path / "svc", extra_args=[
        "--mqtt-auth", "cert", "--mqtt-tls-port", str(tls_port), "--mqtt-ca", str(pki.ca_cert),
        "--mqtt-cert", str(pki.server_cert), "--mqtt-key", str(pki.server_key), "--report-min-interval", "0",
        "--mqtt-certificates", "registered"])
    service.start()
    try:
        iot = service.client()
        newcomer, stranger = pki.issue("newcomer"), pki.issue("stranger")
        assert TlsDevice(tls_port, pki, "newcomer", newcomer).reason == 135  # signed, not registered
        iot.register_certificate(certificatePem=newcomer[0].read_text(), status="ACTIVE")
        connected: list[TlsDevice] = []
        wait_for(lambda: connected.append(attempt := TlsDevice(tls_port, pki, "newcomer", newcomer))
                 or attempt.reason == 0, 5, "the certificate registered ACTIVE let in")
        device = connected[-1]
        assert device.report(1) == "ACCEPTED"

        iot.update_certificate(certificateId=certificate_id(newcomer[0]), newStatus="INACTIVE")
        wait_for(lambda: device.closed, 5, "the inactive certificate's connection closed")
        stop_network_loop(device.client)
        assert TlsDevice(tls_port, pki, "newcomer", newcomer).reason == 135
        iot.update_certificate(certificateId=certificate_id(newcomer[0]), newStatus="ACTIVE")
        wait_for(lambda: connected.append(attempt := TlsDevice(tls_port, pki, "newcomer", newcomer))
                 or attempt.reason == 0, 5, "ACTIVE again, let in again")
        connected[-1].close()

        service.restart()  # the plugin starts empty: the service gives it the ACTIVE list again
        device = TlsDevice(tls_port, pki, "newcomer", newcomer)
        assert device.reason == 0 and device.report(2) == "ACCEPTED"
        assert TlsDevice(tls_port, pki, "stranger", stranger).reason == 135
        wait_for(lambda: mqtt_denials(service.endpoint, "auth_certificate_not_registered") == 1, 5,
                 "the refusal counted (since the restart) under its reason")
        assert metric_sample(service.endpoint, "iotdefender_mqtt_accepted_certificates") == 1

        # Deleted (after INACTIVE, as AWS requires), a certificate is as if never registered.
        iot.update_certificate(certificateId=certificate_id(newcomer[0]), newStatus="INACTIVE")
        wait_for(lambda: device.closed, 5, "the inactive certificate's connection closed")
        stop_network_loop(device.client)
        iot.delete_certificate(certificateId=certificate_id(newcomer[0]))
        wait_for(lambda: TlsDevice(tls_port, pki, "newcomer", newcomer).reason == 135
                 and mqtt_denials(service.endpoint, "auth_certificate_not_registered") >= 2, 5,
                 "the deleted certificate refused as not registered")
        assert metric_sample(service.endpoint, "iotdefender_mqtt_refused_certificates") == 0
    finally:
        service.stop()


def test_certificates_attached_to_things_answer_as_aws_does(tls_service):
    """AttachThingPrincipal and its listings, as a provisioning script uses them, and AWS's rules."""
    service, pki, _port = tls_service
    iot = service.client()
    arns = [iot.register_certificate_without_ca(certificatePem=pki.issue(f"principal-{n}")[0].read_text(),
                                                status="ACTIVE")["certificateArn"] for n in range(3)]
    for name in ("sensor-a", "sensor-b", "sensor-c"):
        iot.create_thing(thingName=name)
    iot.attach_thing_principal(thingName="sensor-a", principal=arns[0])
    iot.attach_thing_principal(thingName="sensor-a", principal=arns[0])  # again: nothing changes
    iot.attach_thing_principal(thingName="sensor-b", principal=arns[0])
    iot.attach_thing_principal(thingName="sensor-a", principal=arns[1], thingPrincipalType="EXCLUSIVE_THING")
    assert sorted(iot.list_thing_principals(thingName="sensor-a")["principals"]) == sorted(arns[:2])
    assert iot.list_principal_things(principal=arns[0])["things"] == ["sensor-a", "sensor-b"]
    v2 = iot.list_thing_principals_v2(thingName="sensor-a", thingPrincipalType="EXCLUSIVE_THING")
    assert v2["thingPrincipalObjects"] == [{"principal": arns[1], "thingPrincipalType": "EXCLUSIVE_THING"}]
    assert iot.list_principal_things_v2(principal=arns[0])["principalThingObjects"] == [
        {"thingName": "sensor-a", "thingPrincipalType": "NON_EXCLUSIVE_THING"},
        {"thingName": "sensor-b", "thingPrincipalType": "NON_EXCLUSIVE_THING"}]
    paged = [thing for page in iot.get_paginator("list_principal_things").paginate(
        principal=arns[0], PaginationConfig={"PageSize": 1}) for thing in page["things"]]
    assert paged == ["sensor-a", "sensor-b"]

    # Exclusive: no other thing while it holds, and not over another thing's attachment.
    with pytest.raises(iot.exceptions.InvalidRequestException, match="exclusively to thing sensor-a"):
        iot.attach_thing_principal(thingName="sensor-c", principal=arns[1])
    with pytest.raises(iot.exceptions.InvalidRequestException, match="sensor-a, sensor-b"):
        iot.attach_thing_principal(thingName="sensor-c", principal=arns[0], thingPrincipalType="EXCLUSIVE_THING")
    # Unknown thing or certificate, or a principal that is no certificate's ARN.
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.attach_thing_principal(thingName="nobody", principal=arns[2])
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.attach_thing_principal(thingName="sensor-c", principal=arns[2][:-64] + "0" * 64)
    for principal in ("us-east-1:2f6b9a8e-0000-4000-8000-000000000000", "arn:aws:iot:eu-west-1:123456789012:cert/"
                      + arns[2][-64:], arns[2] + "0", "", "ü", arns[2][:-64] + "中ü"):  # UTF-8 headers: judged, not 403
        with pytest.raises(iot.exceptions.InvalidRequestException):
            iot.attach_thing_principal(thingName="sensor-c", principal=principal)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_thing_principals(thingName="nobody")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_principal_things(principal=arns[2][:-64] + "0" * 64)
    assert iot.list_principal_things(principal=arns[2])["things"] == []

    # Neither a thing nor a certificate is deleted while attached (AWS's words for the thing).
    with pytest.raises(iot.exceptions.InvalidRequestException,
                       match="Cannot delete. Thing sensor-b is still attached to one or more principals"):
        iot.delete_thing(thingName="sensor-b")
    certificate_id = arns[0][-64:]
    iot.update_certificate(certificateId=certificate_id, newStatus="INACTIVE")
    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_certificate(certificateId=certificate_id, forceDelete=True)
    iot.detach_thing_principal(thingName="sensor-a", principal=arns[0])
    iot.detach_thing_principal(thingName="sensor-a", principal=arns[0])  # not attached: succeeds
    iot.detach_thing_principal(thingName="sensor-b", principal=arns[0])
    iot.delete_thing(thingName="sensor-b")
    iot.delete_certificate(certificateId=certificate_id)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):  # deleted: no longer a principal
        iot.list_principal_things(principal=arns[0])
    # Once the exclusive attachment is gone, another thing may take the certificate.
    iot.detach_thing_principal(thingName="sensor-a", principal=arns[1])
    iot.attach_thing_principal(thingName="sensor-c", principal=arns[1])
    assert iot.list_principal_things(principal=arns[1])["things"] == ["sensor-c"]


def test_a_certificate_attached_to_things_connects_only_as_them(tls_service):
    """As on AWS IoT, the attachment names the thing a connection is, not the common name: a
    certificate whose common name is a serial number connects as the thing it is attached to, and
    only as things it is attached to; detached, the common-name rule again. Revoked, its
    connection under the thing's name is closed."""
    service, pki, port = tls_service
    iot = service.client()
    files = pki.issue("serial-0042")
    arn = iot.register_certificate(certificatePem=files[0].read_text(), caCertificatePem=pki.ca_cert.read_text(),
                                   status="ACTIVE")["certificateArn"]
    for name in ("boiler-7", "boiler-8"):
        iot.create_thing(thingName=name)
    refused_before = mqtt_denials(service.endpoint, "auth_certificate_not_attached")
    assert TlsDevice(port, pki, "boiler-7", files).reason == 135  # not attached: the common name rules
    by_name = TlsDevice(port, pki, "serial-0042", files)
    assert by_name.reason == 0

    iot.attach_thing_principal(thingName="boiler-7", principal=arn)
    wait_for(lambda: by_name.closed, 5, "the connection under the common name closed once attached elsewhere")
    stop_network_loop(by_name.client)
    attempts: list[TlsDevice] = []
    wait_for(lambda: attempts.append(attempt := TlsDevice(port, pki, "boiler-7", files)) or attempt.reason == 0, 5,
             "the attached thing let in")
    device = attempts[-1]
    assert device.report(1) == "ACCEPTED"  # its own topics, as the thing it is attached to
    assert metric_sample(service.endpoint, "iotdefender_mqtt_attached_certificates") >= 1
    from tests.e2e.test_console_http import logged_in
    page = logged_in(service)[0].get("/console/things/boiler-7")  # where the operator can cut it off
    assert page.status_code == 200 and f'data-certificate="{arn[-64:]}"' in page.text
    assert TlsDevice(port, pki, "serial-0042", files).reason == 135
    assert TlsDevice(port, pki, "boiler-8", files).reason == 135  # a thing it is not attached to
    wait_for(lambda: mqtt_denials(service.endpoint, "auth_certificate_not_attached") >= refused_before + 2, 5,
             "the refusals counted")
    own = pki.issue("boiler-8")  # boiler-8's own certificate: its common name, attached to nothing
    by_own = TlsDevice(port, pki, "boiler-8", own)
    assert by_own.reason == 0  # no certificate is attached to boiler-8 yet

    # Attached to a second thing, it connects as either; that thing is then its attached
    # certificates' (AWS's iot:Connection.Thing.IsAttached): its own unattached certificate is cut
    # off and refused. Detached from the first, that connection closes.
    iot.attach_thing_principal(thingName="boiler-8", principal=arn)
    wait_for(lambda: by_own.closed, 5, "the unattached certificate's connection closed once boiler-8 was claimed")
    stop_network_loop(by_own.client)
    assert TlsDevice(port, pki, "boiler-8", own).reason == 135
    wait_for(lambda: (attempt := TlsDevice(port, pki, "boiler-8", files)).reason == 0 and (attempt.close() or True), 5,
             "the second thing let in")
    iot.detach_thing_principal(thingName="boiler-7", principal=arn)
    wait_for(lambda: device.closed, 5, "the detached thing's connection closed")
    stop_network_loop(device.client)
    assert TlsDevice(port, pki, "boiler-7", files).reason == 135

    # Revoked: closed under the thing's name, the only one it is connected as.
    device = TlsDevice(port, pki, "boiler-8", files)
    assert device.reason == 0 and device.report(2) == "ACCEPTED"
    iot.update_certificate(certificateId=arn[-64:], newStatus="REVOKED")
    wait_for(lambda: device.closed, 5, "the revoked certificate's connection under its thing's name closed")
    stop_network_loop(device.client)
    assert TlsDevice(port, pki, "boiler-8", files).reason == 135
    # Detached from boiler-8 (revoked, still attached until then), the thing is nobody's: its own
    # certificate connects again by its common name.
    iot.detach_thing_principal(thingName="boiler-8", principal=arn)
    wait_for(lambda: (attempt := TlsDevice(port, pki, "boiler-8", own)).reason == 0 and (attempt.close() or True), 5,
             "boiler-8's own certificate let in once nothing is attached to it")

    # Detached from everything: its common name again (were it ACTIVE).
    files2 = pki.issue("serial-0043")
    arn2 = iot.register_certificate_without_ca(certificatePem=files2[0].read_text(), status="ACTIVE")["certificateArn"]
    iot.attach_thing_principal(thingName="boiler-7", principal=arn2)
    wait_for(lambda: (attempt := TlsDevice(port, pki, "boiler-7", files2)).reason == 0 and (attempt.close() or True), 5,
             "attached")
    iot.detach_thing_principal(thingName="boiler-7", principal=arn2)
    wait_for(lambda: (attempt := TlsDevice(port, pki, "serial-0043", files2)).reason == 0 and (attempt.close() or True),
             5, "the common name let in again")
    assert TlsDevice(port, pki, "boiler-7", files2).reason == 135



def test_certificates_created_by_the_service_connect_as_on_aws(tls_service, tmp_path):
    """With --mqtt-ca-key, AWS IoT's usual provisioning works as written: CreateKeysAndCertificate,
    CreateThing, AttachThingPrincipal, and the device connects with what the call answered; its
    certificate names no thing (CN=AWS IoT Certificate), so only the attachment lets it in.
    CreateCertificateFromCsr signs a device's own key, keeping the CSR's subject."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    service, pki, port = tls_service
    iot = service.client()
    made = iot.create_keys_and_certificate(setAsActive=True)
    cert, key = tmp_path / "made.pem", tmp_path / "made.key"
    cert.write_text(made["certificatePem"])
    key.write_text(made["keyPair"]["PrivateKey"])
    issued = x509.load_pem_x509_certificate(made["certificatePem"].encode())
    assert issued.subject.rfc4514_string() == "CN=AWS IoT Certificate" and issued.issuer == \
        x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()).subject
    assert made["certificateId"] == certificate_id(cert)
    described = iot.describe_certificate(certificateId=made["certificateId"])["certificateDescription"]
    assert described["status"] == "ACTIVE" and described["caCertificateId"] == certificate_id(pki.ca_cert)
    iot.create_thing(thingName="provisioned-1")
    assert TlsDevice(port, pki, "provisioned-1", (cert, key)).reason == 135  # not attached yet
    iot.attach_thing_principal(thingName="provisioned-1", principal=made["certificateArn"])
    attempts: list[TlsDevice] = []
    wait_for(lambda: attempts.append(a := TlsDevice(port, pki, "provisioned-1", (cert, key))) or a.reason == 0, 5,
             "the provisioned device let in")
    assert attempts[-1].report(1) == "ACCEPTED"
    attempts[-1].close()

    # Without setAsActive it is INACTIVE, as on AWS: refused though the broker's CA signed it.
    inactive = iot.create_keys_and_certificate()
    assert iot.describe_certificate(certificateId=inactive["certificateId"])["certificateDescription"][
        "status"] == "INACTIVE"
    (tmp_path / "inactive.pem").write_text(inactive["certificatePem"])
    (tmp_path / "inactive.key").write_text(inactive["keyPair"]["PrivateKey"])
    iot.attach_thing_principal(thingName="provisioned-1", principal=inactive["certificateArn"])
    time.sleep(0.3)
    assert TlsDevice(port, pki, "provisioned-1", (tmp_path / "inactive.pem", tmp_path / "inactive.key")).reason == 135

    # From a CSR: the device's own key, the CSR's subject (its thing's name: no attachment needed).
    device_key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csr-device")]))
           .sign(device_key, hashes.SHA256()))
    signed = iot.create_certificate_from_csr(
        certificateSigningRequest=csr.public_bytes(serialization.Encoding.PEM).decode(), setAsActive=True)
    (tmp_path / "csr.pem").write_text(signed["certificatePem"])
    (tmp_path / "csr.key").write_bytes(device_key.private_bytes(serialization.Encoding.PEM,
                                                                serialization.PrivateFormat.PKCS8,
                                                                serialization.NoEncryption()))
    device = TlsDevice(port, pki, "csr-device", (tmp_path / "csr.pem", tmp_path / "csr.key"))
    assert device.reason == 0 and device.report(1) == "ACCEPTED"
    device.close()
    again = iot.create_certificate_from_csr(certificateSigningRequest=csr.public_bytes(serialization.Encoding.PEM)
                                            .decode())
    assert again["certificateId"] != signed["certificateId"]  # AWS: the same CSR, a distinct certificate

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak_csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(
        NameOID.COMMON_NAME, "weak")])).sign(weak, hashes.SHA256()))
    for request in (weak_csr.public_bytes(serialization.Encoding.PEM).decode(), "not a CSR"):
        with pytest.raises(iot.exceptions.InvalidRequestException):
            iot.create_certificate_from_csr(certificateSigningRequest=request)


def test_the_console_lists_certificates_and_attaches_them_to_things(tls_service):
    """/console/certificates: every certificate with its common name and the things it is attached
    to; attaching and detaching through it is the API's (a refusal shown by the form, as typed), and
    a device connects as the thing attached there."""
    from tests.e2e.test_console_http import logged_in

    service, pki, port = tls_service
    client, token = logged_in(service)
    iot = service.client()
    files = pki.issue("serial-console")
    cert_id = iot.register_certificate_without_ca(certificatePem=files[0].read_text(), status="ACTIVE")["certificateId"]
    iot.create_thing(thingName="valve-3")
    page = client.get("/console/certificates")
    assert page.status_code == 200 and f'data-certificate="{cert_id}"' in page.text and "serial-console" in page.text
    assert 'aria-current="page">Certificates' in page.text

    attach = f"/console/certificates/{cert_id}/attach"
    assert client.post(attach, data={"thingName": "valve-3"}).status_code == 403  # no CSRF token
    done = client.post(attach, data={"csrf": token, "thingName": "valve-3", "next": "/console/certificates"})
    assert done.status_code == 303 and done.headers["location"] == "/console/certificates"
    assert iot.list_principal_things(principal=iot.describe_certificate(certificateId=cert_id)[
        "certificateDescription"]["certificateArn"])["things"] == ["valve-3"]
    row = client.get("/console/certificates").text.split(f'data-certificate="{cert_id}"')[1].split("</tr>")[0]
    assert 'href="/console/things/valve-3"' in row
    wait_for(lambda: (attempt := TlsDevice(port, pki, "valve-3", files)).reason == 0 and (attempt.close() or True), 5,
             "the device let in as the thing attached through the console")
    assert f'data-certificate="{cert_id}"' in client.get("/console/things/valve-3").text  # its device's page

    refused = client.post(attach, data={"csrf": token, "thingName": "no-such-valve", "next": "/console/certificates"})
    assert refused.status_code == 404 and "ResourceNotFoundException" in refused.text
    assert 'value="no-such-valve"' in refused.text  # the form as typed
    detached = client.post(f"/console/certificates/{cert_id}/detach",
                           data={"csrf": token, "thingName": "valve-3", "next": "/console/certificates"})
    assert detached.status_code == 303
    assert 'href="/console/things/valve-3"' not in client.get("/console/certificates").text.split(
        f'data-certificate="{cert_id}"')[1].split("</tr>")[0]
    status = client.post(f"/console/certificates/{cert_id}/status",
                         data={"csrf": token, "newStatus": "INACTIVE", "next": "/console/certificates"})
    assert status.status_code == 303 and status.headers["location"] == "/console/certificates"
    assert iot.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"] == "INACTIVE"
    assert client.get("/console/certificates?marker=bogus").status_code == 400
    # Page after page, every certificate once, newest first.
    for n in range(51):
        iot.register_certificate_without_ca(certificatePem=self_signed(f"paged-{n}"))
    listed = [c["certificateId"] for p in iot.get_paginator("list_certificates").paginate() for c in p["certificates"]]
    shown, path = [], "/console/certificates"
    while path:
        text = client.get(path).text
        shown += re.findall(r'<tr data-certificate="([0-9a-f]{64})"', text)
        found = re.search(r'href="(/console/certificates\?marker=[^"]+)" rel="next"', text)
        path = html.unescape(found.group(1)) if found else ""
    assert shown == listed and len(shown) > 50

    # A refusal on an older page shows that page, the reason by the form and what was typed (the
    # exclusive box too); one for a certificate gone meanwhile says so above the list; a status
    # refused from the list is shown there as well.
    older = html.unescape(re.search(r'href="(/console/certificates\?marker=[^"]+)" rel="next"',
                                    client.get("/console/certificates").text).group(1))
    on_older = re.findall(r'<tr data-certificate="([0-9a-f]{64})"', client.get(older).text)[0]
    refused = client.post(f"/console/certificates/{on_older}/attach",
                          data={"csrf": token, "thingName": "typed-thing", "exclusive": "1", "next": older})
    row = refused.text.split(f'data-certificate="{on_older}"')[1].split("</tr>")[0]
    assert refused.status_code == 404 and "ResourceNotFoundException" in row and 'value="typed-thing"' in row
    assert 'value="1" checked' in row
    gone = listed[-1]
    iot.delete_certificate(certificateId=gone)
    stale = client.post(f"/console/certificates/{gone}/attach",
                        data={"csrf": token, "thingName": "valve-3", "next": "/console/certificates"})
    assert stale.status_code == 404 and f"Certificate {gone[:16]}…: ResourceNotFoundException" in stale.text
    wrong = client.post(f"/console/certificates/{listed[0]}/status",
                        data={"csrf": token, "newStatus": "PENDING_TRANSFER", "next": "/console/certificates"})
    assert wrong.status_code == 400 and 'id="certificates"' in wrong.text and "InvalidRequestException" in \
        wrong.text.split(f'data-certificate="{listed[0]}"')[1].split("</tr>")[0]


def test_a_certificate_without_a_common_name_is_refused_for_that_reason(tls_service, tmp_path):
    """It names no client unless attached to a thing (it was counted as no certificate at all)."""
    service, pki, port = tls_service
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    nameless = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                                                        "no common name")]))
                .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
                .sign(ca_key, hashes.SHA256()))
    files = (tmp_path / "nameless.pem", tmp_path / "nameless.key")
    files[0].write_bytes(nameless.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    before = mqtt_denials(service.endpoint, "auth_certificate_no_common_name")
    assert TlsDevice(port, pki, "whatever", files).reason == 135
    wait_for(lambda: mqtt_denials(service.endpoint, "auth_certificate_no_common_name") == before + 1, 5,
             "the refusal counted under its reason")
