"""CreateKeysAndCertificate and CreateCertificateFromCsr sign only with a CA key the operator gave
(``--mqtt-ca-key``), and ``serve`` refuses a key that is not its CA's before anything starts.
(End to end, with devices connecting with what they answered: tests/e2e/test_certificates.py.)"""

from __future__ import annotations

import pytest

from iotdefender.contract.errors import ApiError
from iotdefender.controlplane import registry
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.dispatch import Dispatcher
from iotdefender.controlplane.issuer import CertificateIssuer
from iotdefender.service import ConfigurationError, certificate_issuer
from iotdefender.settings import Settings
from tests.support.certificates import Pki


def test_without_the_ca_key_no_certificate_is_created(engine):
    call = Dispatcher(ServiceContext(engine=engine), registry.IMPLEMENTED, lambda: None).call_by_name
    for operation, params in (("CreateKeysAndCertificate", {"setAsActive": True}),
                              ("CreateCertificateFromCsr", {"certificateSigningRequest": "x"})):
        with pytest.raises(ApiError) as refused:
            call(operation, params)
        assert refused.value.code == "InvalidRequestException" and "--mqtt-ca-key" in str(refused.value)


def test_a_key_that_is_not_the_cas_is_refused_at_start(tmp_path):
    pki = Pki(tmp_path, "127.0.0.1")
    assert certificate_issuer(Settings(mqtt_ca=str(pki.ca_cert), mqtt_ca_key=str(pki.ca_key))) is not None
    assert certificate_issuer(Settings(mqtt_ca=str(pki.ca_cert))) is None
    with pytest.raises(ConfigurationError, match="is not the key of the certificate in --mqtt-ca"):
        certificate_issuer(Settings(mqtt_ca=str(pki.ca_cert), mqtt_ca_key=str(pki.server_key)))
    with pytest.raises(ConfigurationError, match="needs --mqtt-ca"):
        certificate_issuer(Settings(mqtt_ca_key=str(pki.ca_key)))
    with pytest.raises(ConfigurationError, match="not a CA certificate"):  # a device certificate and its key
        certificate_issuer(Settings(mqtt_ca=str(pki.server_cert), mqtt_ca_key=str(pki.server_key)))
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        CertificateIssuer.from_files(pki.ca_cert, pki.ca_cert)


def test_a_ca_whose_key_usage_forbids_signing_certificates_is_refused(tmp_path):
    """CA:TRUE is not enough: without keyCertSign nothing it signs verifies (an outside-in test)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signs nothing")])
    now = dt.datetime.now(dt.timezone.utc)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(usage, critical=True).sign(key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    with pytest.raises(ValueError, match="lacks keyCertSign"):
        CertificateIssuer.from_files(tmp_path / "ca.pem", tmp_path / "ca.key")
