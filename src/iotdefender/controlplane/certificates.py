"""Device certificates: RegisterCertificate, RegisterCertificateWithoutCA, DescribeCertificate,
ListCertificates, UpdateCertificate, DeleteCertificate.

Why they are here: the response to a Detect alarm on a compromised device is to cut it off, and AWS
IoT's way is ``UpdateCertificate`` to INACTIVE or REVOKED, after which "devices cannot use a
certificate that is not in the ACTIVE state to reconnect" and those connected are disconnected
(AWS IoT API reference, UpdateCertificate). The broker enforces it here (brokers/certificate_gate.py,
and the ``deny-certificates`` command of the Mosquitto plugin): milliseconds on a quiet broker, about
a second while many refused devices reconnect (bench/README.md, "Certificate revocation").

What differs from AWS IoT, and why (docs/api-behaviour.md, "Certificates"):

- Registering is optional. Under ``--mqtt-auth cert`` a device connects with any certificate the
  broker's CA (``--mqtt-ca``) signed, registered or not, as before this existed; a registered one
  connects only while it is ACTIVE. So to shut out a device whose key leaked, register its
  certificate as REVOKED, or register it and update it.
- A deleted certificate stays refused: deleting makes it unknown to the API, and an unknown
  certificate signed by the CA would otherwise connect again. Registering it again brings it back.
- ``certificateId`` is the SHA-256 of the DER encoding, as AWS IoT's; the broker computes the
  same from the certificate a device presents.
- RegisterCertificate checks ``caCertificatePem`` signed the certificate when it is given; there is
  no registry of CA certificates, so without it the issuer is not checked.
- A REVOKED certificate cannot be made ACTIVE or INACTIVE again (CertificateStateException).
- CreateKeysAndCertificate and CreateCertificateFromCsr issue certificates signed by the broker's
  CA, only when the operator gives its key (``--mqtt-ca-key``, controlplane/issuer.py).
- Certificates are not attached to policies; attached to things, they name the things a device may
  connect as (controlplane/thing_principals.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cryptography.x509.oid import NameOID

from iotdefender.contract.errors import ApiError, already_exists, invalid_request, not_found
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.issuer import AWS_SUBJECT, CertificateIssuer, acceptable_key, new_key_pair
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.controlplane.pagination import decode_token, encode_token, scope_of
from iotdefender.english import some_of
from iotdefender.store import certificates, thing_principals

operation = OperationTable()

#: The statuses an operator may set (the model's others are AWS-internal or deprecated).
SETTABLE = ("ACTIVE", "INACTIVE", "REVOKED")
REVOKED = "REVOKED"
DEFAULT_PAGE_SIZE = 25
#: The writes the broker's list of refused certificates follows (brokers/certificate_gate.py).
WRITES = frozenset({"RegisterCertificate", "RegisterCertificateWithoutCA", "UpdateCertificate", "DeleteCertificate",
                    "AttachThingPrincipal", "DetachThingPrincipal", "CreateKeysAndCertificate",
                    "CreateCertificateFromCsr"})


def certificate_id_of(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


_CERTIFICATE_ARN = re.compile(r"arn:aws:iot:[^:]*:[^:]*:cert/(?:0x)?([0-9a-fA-F]{64})")


def certificate_id_of_arn(arn: str) -> str | None:
    """The id in a certificate's ARN (``arn:aws:iot:REGION:ACCOUNT:cert/ID``), or None."""
    match = _CERTIFICATE_ARN.fullmatch(arn)
    return match.group(1).lower() if match else None


def written_certificate(params: Params | None, output: Params | None = None) -> str | None:
    """The id of the certificate a successful write (one of ``WRITES``) of ``params`` changed (or
    made: its ``output`` says); None when it cannot be told (the caller then reads every certificate)."""
    if output and "certificateId" in output:
        return _normal_id(str(output["certificateId"]))
    if not params:
        return None
    if "certificateId" in params:
        return _normal_id(str(params["certificateId"]))
    if "principal" in params:  # AttachThingPrincipal, DetachThingPrincipal
        return certificate_id_of_arn(str(params["principal"]))
    try:
        return certificate_id_of(_parsed(params["certificatePem"], "certificatePem").public_bytes(Encoding.DER))
    except (KeyError, ApiError):
        return None


def _state_error(message: str) -> ApiError:
    return ApiError("CertificateStateException", message)


def _validation_error(message: str) -> ApiError:
    return ApiError("CertificateValidationException", message)


def _parsed(pem: str, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode("utf-8", "surrogatepass"))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as error:
        raise _validation_error(f"The {what} is not a PEM-encoded X.509 certificate: {error}") from None


def _common_name(certificate: x509.Certificate) -> str | None:
    try:
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    value = names[0].value if names else None
    # One with a NUL names no client (the plugin refuses such a name), and PostgreSQL cannot store it.
    return value if isinstance(value, str) and "\x00" not in value else None


def _status_of(params: Params) -> str:
    status = params.get("status")
    if status is None:  # RegisterCertificate's deprecated flag; INACTIVE when neither is given, as AWS
        return "ACTIVE" if params.get("setAsActive") else "INACTIVE"
    if status not in SETTABLE:
        raise invalid_request(f"status must be one of {', '.join(SETTABLE)}, not {status}")
    return status


def _register(ctx: ServiceContext, params: Params, ca: x509.Certificate | None, mode: str) -> Params:
    certificate = _parsed(params["certificatePem"], "certificatePem")
    if ca is not None:
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise _validation_error("The certificate was not signed by caCertificatePem") from None
    return _store(ctx, certificate, ca, _status_of(params), mode)


def _store(ctx: ServiceContext, certificate: x509.Certificate, ca: x509.Certificate | None, status: str,
           mode: str) -> Params:
    """Register ``certificate`` (signed by ``ca`` when given) in ``status``."""
    der = certificate.public_bytes(Encoding.DER)
    certificate_id = certificate_id_of(der)
    arn = ctx.arn(f"cert/{certificate_id}")
    with ctx.writing() as conn:
        if certificates.get(conn, certificate_id) is not None:
            raise already_exists("The certificate is already registered", certificate_id, arn)
        now = ctx.now()
        certificates.put(conn, certificate_id=certificate_id, arn=arn,
                         pem=certificate.public_bytes(Encoding.PEM).decode(), common_name=_common_name(certificate),
                         ca_certificate_id=certificate_id_of(ca.public_bytes(Encoding.DER)) if ca else None,
                         status=status, certificate_mode=mode,
                         not_before=certificate.not_valid_before_utc.timestamp(),
                         not_after=certificate.not_valid_after_utc.timestamp(), customer_version=1,
                         generation_id=str(uuid.uuid4()), creation_date=now, last_modified_date=now)
    return {"certificateArn": arn, "certificateId": certificate_id}


def _issuer(ctx: ServiceContext) -> CertificateIssuer:
    if ctx.issuer is None:
        raise invalid_request("This service issues no certificates: start it with --mqtt-ca-key (the private key "
                              "of --mqtt-ca), or register certificates of your own PKI (RegisterCertificate)")
    return ctx.issuer


def _issued(ctx: ServiceContext, issuer: CertificateIssuer, public_key: Any, subject: x509.Name,
            params: Params) -> tuple[Params, x509.Certificate]:
    """Issue and register (ACTIVE with ``setAsActive``, else INACTIVE, as AWS)."""
    certificate = issuer.issue(public_key, subject, dt.datetime.fromtimestamp(ctx.now(), dt.timezone.utc))
    status = "ACTIVE" if params.get("setAsActive") else "INACTIVE"
    return _store(ctx, certificate, issuer.ca_certificate, status, "DEFAULT"), certificate


@operation("CreateKeysAndCertificate", changes_monitoring=False)
def create_keys_and_certificate(ctx: ServiceContext, params: Params) -> Params:
    """A 2048-bit RSA key pair, as AWS IoT makes, and its certificate signed by the broker's CA
    (controlplane/issuer.py). The private key is in this answer only: it is never stored."""
    issuer = _issuer(ctx)
    key = new_key_pair()
    registered, certificate = _issued(ctx, issuer, key.public_key(), AWS_SUBJECT, params)
    return {**registered, "certificatePem": certificate.public_bytes(Encoding.PEM).decode(),
            "keyPair": {"PublicKey": key.public_key().public_bytes(Encoding.PEM,
                                                                   PublicFormat.SubjectPublicKeyInfo).decode(),
                        "PrivateKey": key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL,
                                                        NoEncryption()).decode()}}


@operation("CreateCertificateFromCsr", changes_monitoring=False)
def create_certificate_from_csr(ctx: ServiceContext, params: Params) -> Params:
    """A certificate for the CSR's key and subject, signed by the broker's CA; the same CSR again
    gives another certificate (AWS: "Reusing the same certificate signing request (CSR) results in a
    distinct certificate")."""
    issuer = _issuer(ctx)
    try:
        request = x509.load_pem_x509_csr(params["certificateSigningRequest"].encode("utf-8", "surrogatepass"))
        public_key = request.public_key()
        signed = request.is_signature_valid
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as error:
        raise invalid_request(f"The certificateSigningRequest is not a PEM-encoded certificate signing request: "
                              f"{error}") from None
    if not signed:
        raise invalid_request("The certificateSigningRequest's signature does not verify with its own key")
    if not acceptable_key(public_key):
        raise invalid_request("The certificateSigningRequest's key must be RSA of at least 2048 bits or ECC on NIST "
                              "P-256, P-384 or P-521")
    registered, certificate = _issued(ctx, issuer, public_key, request.subject, params)
    return {**registered, "certificatePem": certificate.public_bytes(Encoding.PEM).decode()}


@operation("RegisterCertificate", changes_monitoring=False)
def register_certificate(ctx: ServiceContext, params: Params) -> Params:
    ca = params.get("caCertificatePem")
    return _register(ctx, params, _parsed(ca, "caCertificatePem") if ca is not None else None, "DEFAULT")


@operation("RegisterCertificateWithoutCA", changes_monitoring=False)
def register_certificate_without_ca(ctx: ServiceContext, params: Params) -> Params:
    return _register(ctx, params, None, "SNI_ONLY")


def _normal_id(certificate_id: str) -> str:
    """The model's pattern ``(0x)?[a-fA-F0-9]+``: stored in lowercase, without the prefix."""
    return certificate_id.lower().removeprefix("0x")


def require_certificate(conn: Any, certificate_id: str) -> dict[str, Any]:
    row = certificates.get(conn, _normal_id(certificate_id))
    if row is None:
        raise not_found(f"Certificate {certificate_id} does not exist")
    return row


@operation("DescribeCertificate")
def describe_certificate(ctx: ServiceContext, params: Params) -> Params:
    with ctx.engine.connect() as conn:
        row = require_certificate(conn, params["certificateId"])
    description = {"certificateArn": row["arn"], "certificateId": row["certificate_id"], "status": row["status"],
                   "certificatePem": row["pem"], "ownedBy": ctx.account_id, "creationDate": row["creation_date"],
                   "lastModifiedDate": row["last_modified_date"], "customerVersion": row["customer_version"],
                   "generationId": row["generation_id"], "certificateMode": row["certificate_mode"],
                   "validity": {"notBefore": row["not_before"], "notAfter": row["not_after"]}}
    if row["ca_certificate_id"]:
        description["caCertificateId"] = row["ca_certificate_id"]
    return {"certificateDescription": description}


@operation("ListCertificates")
def list_certificates(ctx: ServiceContext, params: Params) -> Params:
    """Newest first unless ``isAscendingOrder`` (by creation date, as AWS documents)."""
    ascending = bool(params.get("ascendingOrder"))
    scope = scope_of({"ascendingOrder": ascending})
    after = decode_token(params.get("marker"), scope, (float, str))
    limit = params.get("pageSize") or DEFAULT_PAGE_SIZE
    with ctx.engine.connect() as conn:
        rows = certificates.page(conn, tuple(after) if after else None, limit + 1, ascending)
    result: Params = {"certificates": [
        {"certificateArn": row["arn"], "certificateId": row["certificate_id"], "status": row["status"],
         "certificateMode": row["certificate_mode"], "creationDate": row["creation_date"]} for row in rows[:limit]]}
    if len(rows) > limit:
        result["nextMarker"] = encode_token([rows[limit - 1]["creation_date"], rows[limit - 1]["certificate_id"]], scope)
    return result


@operation("UpdateCertificate", changes_monitoring=False)
def update_certificate(ctx: ServiceContext, params: Params) -> Params:
    """A certificate no longer ACTIVE is refused at CONNECT, and its device's connection closed, by
    every broker node within the time a change takes to reach them (AWS: minutes)."""
    new_status = params["newStatus"]
    if new_status not in SETTABLE:
        raise invalid_request(f"newStatus must be one of {', '.join(SETTABLE)}, not {new_status}")
    with ctx.writing() as conn:
        row = require_certificate(conn, params["certificateId"])
        if row["status"] == new_status:
            return {}
        if row["status"] == REVOKED:
            raise _state_error(f"Certificate {row['certificate_id']} is REVOKED: its status cannot change")
        certificates.update(conn, row["certificate_id"], status=new_status, last_modified_date=ctx.now(),
                            customer_version=row["customer_version"] + 1, generation_id=str(uuid.uuid4()))
    return {}


@operation("DeleteCertificate", changes_monitoring=False)
def delete_certificate(ctx: ServiceContext, params: Params) -> Params:
    """Only a certificate that is not ACTIVE (AWS's rule); it stays refused by the broker."""
    with ctx.writing() as conn:
        row = require_certificate(conn, params["certificateId"])
        if row["status"] == "ACTIVE":
            raise _state_error(f"Certificate {row['certificate_id']} is ACTIVE: update it to INACTIVE before "
                               "deleting it")
        attached = sorted(thing_principals.of_certificate(conn, row["certificate_id"]))
        if attached:  # AWS's rule, whatever forceDelete says (it forces past attached policies only)
            raise ApiError("DeleteConflictException", f"Certificate {row['certificate_id']} is attached to things "
                           f"({some_of(attached)}): detach them "
                           "(DetachThingPrincipal) before deleting it")
        certificates.update(conn, row["certificate_id"], status=certificates.DELETED, last_modified_date=ctx.now())
    return {}
