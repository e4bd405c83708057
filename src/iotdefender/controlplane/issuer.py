"""Device certificates issued by the broker's CA: what CreateKeysAndCertificate and
CreateCertificateFromCsr sign with, when the operator gives the CA's key (``--mqtt-ca-key``).

Why: AWS IoT's tutorials and most provisioning scripts start with CreateKeysAndCertificate (AWS
makes the key pair and signs the certificate) and then attach it to the thing. Here the CA that
the broker trusts (``--mqtt-ca``) signs instead, so such a certificate connects as soon as it is
ACTIVE and attached (controlplane/thing_principals.py). Holding a CA's private key is the
operator's choice: without ``--mqtt-ca-key`` both operations refuse, and certificates come from
the operator's own PKI (RegisterCertificate).

What is issued mirrors AWS IoT's certificates (docs/api-behaviour.md, "Certificates"): subject
``CN=AWS IoT Certificate`` for CreateKeysAndCertificate (so it names no thing: the attachment does),
the CSR's subject for CreateCertificateFromCsr, valid until the end of 2049 or the CA's own end if
sooner, for TLS client authentication only.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The subject of the certificates CreateKeysAndCertificate makes, as AWS IoT's.
AWS_SUBJECT = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AWS IoT Certificate")])
#: AWS IoT's device certificates end then.
LAST_VALID = dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)
#: The public keys a CSR may carry (AWS: RSA of 2048 bits or more, ECC on NIST P-256, P-384, P-521).
CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
MIN_RSA_BITS = 2048


#: One RSA key made at a time: each takes ~75 ms of a core, and eight at once took both cores of a
#: 2-core box from the reports and the API (an outside-in test: DescribeThing p50 171 ms against
#: 30 ms). One at a time is ~13 a second here, above AWS IoT's 10 CreateKeysAndCertificate a second.
_KEYS_AT_ONCE = threading.BoundedSemaphore(1)


def new_key_pair() -> rsa.RSAPrivateKey:
    """A 2048-bit RSA key, as AWS IoT's CreateKeysAndCertificate makes (cryptography releases the
    GIL while it works: the event loop goes on)."""
    with _KEYS_AT_ONCE:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class CertificateIssuer:
    def __init__(self, ca_certificate: x509.Certificate, ca_key: CertificateIssuerPrivateKeyTypes) -> None:
        self.ca_certificate, self._ca_key = ca_certificate, ca_key

    @classmethod
    def from_files(cls, ca_file: str | Path, key_file: str | Path) -> CertificateIssuer:
        """The CA's certificate (the first in the file: with a bundle, the one the key is of) and its
        unencrypted PEM private key; ValueError,
        with what is wrong, when they are not a CA certificate and its key."""
        try:
            ca_certificate = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())[0]
        except (ValueError, IndexError, UnsupportedAlgorithm) as error:
            raise ValueError(f"--mqtt-ca {ca_file} holds no PEM certificate: {error}") from None
        try:
            key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as error:
            raise ValueError(f"--mqtt-ca-key {key_file} is not an unencrypted PEM private key: {error}") from None
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                                ed448.Ed448PrivateKey)):
            raise ValueError(f"--mqtt-ca-key {key_file}: a {type(key).__name__} cannot sign certificates")
        if key.public_key() != ca_certificate.public_key():
            raise ValueError(f"--mqtt-ca-key {key_file} is not the key of the certificate in --mqtt-ca {ca_file}")
        try:
            is_ca = ca_certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:  # only a version 1 certificate may be a CA without saying so (OpenSSL)
            is_ca = ca_certificate.version == x509.Version.v1
        if not is_ca:
            raise ValueError(f"--mqtt-ca {ca_file} is not a CA certificate (no basicConstraints CA:TRUE): TLS (the "
                             "broker's, verifying a device against it) would not accept what it signs")
        try:
            if not ca_certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
                raise ValueError(f"--mqtt-ca {ca_file} may not sign certificates (its keyUsage lacks keyCertSign): "
                                 "TLS would not accept what it signs")
        except x509.ExtensionNotFound:
            pass  # no keyUsage: any use
        return cls(ca_certificate, key)

    def issue(self, public_key: CertificatePublicKeyTypes, subject: x509.Name, now: dt.datetime) -> x509.Certificate:
        """A device certificate for ``public_key``, signed now."""
        ca = self.ca_certificate
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=1))  # a device's clock slightly behind
                   .not_valid_after(min(LAST_VALID, ca.not_valid_after_utc))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=isinstance(public_key,
                                                rsa.RSAPublicKey), content_commitment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self._ca_key.public_key()), critical=False))  # the CA's key (checked equal at load)
        algorithm = None if isinstance(self._ca_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) \
            else hashes.SHA256()
        return builder.sign(self._ca_key, algorithm)


def acceptable_key(public_key: CertificatePublicKeyTypes) -> bool:
    """Whether a CSR's key is one AWS IoT signs."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return public_key.key_size >= MIN_RSA_BITS
    return isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, CURVES)
