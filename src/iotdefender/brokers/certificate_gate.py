"""The broker refuses the certificates registered in another status than ACTIVE.

The database is the truth (controlplane/certificates.py writes it); the broker's plugin holds the
list of refused certificate ids and enforces it at every CONNECT, closing a device already
connected with a certificate as it is refused. This keeps the two equal.

A write names the certificate it changed (an API write of this process, or another node's notice),
and only that certificate's row is read again: reading the whole list at every write made a bulk
revocation quadratic (1,000 UpdateCertificate calls read 300,000 rows, and a list of 100,000
refused certificates would be read whole at each call). The whole list is read at start, after a
notice may have been missed (a reconnection to NATS), and every ``period_s`` anyway, so a lost
notice is made good within that period.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

import anyio
import structlog
from prometheus_client import Gauge
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from iotdefender.controlplane.certificates import WRITES, written_certificate
from iotdefender.store import certificates

log = structlog.get_logger("iotdefender.brokers")

REFUSED_CERTIFICATES = Gauge("iotdefender_mqtt_refused_certificates",
                             "Certificates the broker refuses: registered, and not ACTIVE")


class RefusingBroker(Protocol):
    """What of the broker this needs (brokers/mosquitto/broker.py)."""

    def deny_certificates(self, refused: dict[str, str]) -> None: ...

    def allow_certificates(self, certificate_ids: Iterable[str]) -> None: ...

    @property
    def denied_certificates(self) -> dict[str, str]: ...


class CertificateGate:
    def __init__(self, engine: Engine, broker: RefusingBroker, period_s: float = 30.0) -> None:
        self._engine, self._broker, self._period_s = engine, broker, period_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._pending: set[str] = set()  # certificate ids to read again
        self._whole = False  # read the whole list at the next pass

    def written(self, operation_name: str, params: Any = None) -> None:
        """An API write of this process (its ``on_write`` listener, called from a worker thread)."""
        if operation_name in WRITES:
            certificate_id = written_certificate(params)
            self.changed(None if certificate_id is None else [certificate_id])

    def changed(self, certificate_ids: Iterable[str] | None = None) -> None:
        """These certificates changed (None: any may have): from any thread."""
        if self._loop is not None and self._wake is not None:
            ids = None if certificate_ids is None else list(certificate_ids)
            self._loop.call_soon_threadsafe(self._note, ids)

    def _note(self, certificate_ids: list[str] | None) -> None:
        if certificate_ids is None:
            self._whole = True
        else:
            self._pending.update(certificate_ids)
        assert self._wake is not None
        self._wake.set()

    async def refresh(self) -> None:
        """Make the broker's whole list the database's."""
        refused = await anyio.to_thread.run_sync(self._read_all)
        held = self._broker.denied_certificates
        self._apply({**dict.fromkeys(held.keys() - refused.keys()), **refused})
        REFUSED_CERTIFICATES.set(len(self._broker.denied_certificates))

    async def _refresh_some(self, certificate_ids: set[str]) -> None:
        found = await anyio.to_thread.run_sync(self._read_some, certificate_ids)
        self._apply({certificate_id: found.get(certificate_id) for certificate_id in certificate_ids})
        REFUSED_CERTIFICATES.set(len(self._broker.denied_certificates))

    def _apply(self, wanted: dict[str, str | None]) -> None:
        """``wanted``: certificate id -> its common name if refused, None if not; what changes is
        told to the broker in as few messages as hold it."""
        held = self._broker.denied_certificates
        denied = {key: name for key, name in wanted.items() if name is not None and held.get(key) != name}
        allowed = [key for key, name in wanted.items() if name is None and key in held]
        if denied:
            self._broker.deny_certificates(denied)
        if allowed:
            self._broker.allow_certificates(allowed)
        if denied or allowed:
            log.info("mqtt_certificates_refused", refused=len(self._broker.denied_certificates),
                     newly_refused=len(denied), accepted_again=len(allowed))

    def _read_all(self) -> dict[str, str]:
        with self._engine.connect() as conn:
            return certificates.refused(conn)

    def _read_some(self, certificate_ids: set[str]) -> dict[str, str]:
        with self._engine.connect() as conn:
            return certificates.refused(conn, sorted(certificate_ids))

    async def run(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        self._whole = True
        while True:
            whole, some = self._whole, self._pending
            self._whole, self._pending = False, set()
            try:
                if whole:
                    await self.refresh()
                elif some:
                    await self._refresh_some(some)
            except (SQLAlchemyError, OSError) as error:  # the database is away: the list held stays
                log.warning("mqtt_certificates_not_read", error=repr(error))
                self._whole = True  # what was asked is read again, whole, at the next pass
            try:
                await asyncio.wait_for(self._wake.wait(), self._period_s)
            except asyncio.TimeoutError:
                self._whole = True
            self._wake.clear()
