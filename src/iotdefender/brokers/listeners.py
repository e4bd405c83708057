"""What every broker adapter shares: the listeners to open, the report sink, TLS file checks."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Protocol


class ReportSink(Protocol):
    """Where an adapter hands each report (ingest's ``submit``)."""

    def __call__(self, thing: str, encoding: str, payload: bytes, received: float | None = None, /) -> None:
        """(thing name, "json"|"cbor", payload, when the broker received it if it says): takes the
        report and never raises; the reply follows later. Synchronous, so that the MQTT client
        hands each message over without a task of its own."""


@dataclass(frozen=True)
class ListenerSettings:
    host: str
    port: int
    tls_port: int | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def check_tls_files(ca_file: str | None, cert_file: str | None, key_file: str | None) -> None:
    """Fail at start-up, with a clear message, rather than at the first TLS handshake."""
    if not (cert_file and key_file):
        raise ValueError("--mqtt-tls-port needs --mqtt-cert and --mqtt-key (and --mqtt-ca to verify clients)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    if ca_file:
        context.load_verify_locations(ca_file)
