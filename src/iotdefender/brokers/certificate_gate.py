"""The broker refuses the certificates registered in another status than ACTIVE.

The database is the truth (controlplane/certificates.py writes it); the broker's plugin holds the
list of refused certificate ids and enforces it at every CONNECT, closing a device already
connected with a certificate as it is refused. This keeps the two equal: it reads the list when
woken (an API write of this process, or a notice from another node's) and every ``period_s``
anyway, so a missed notice is made good within that period, and tells the broker the difference.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import anyio
import structlog
from prometheus_client import Gauge
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from iotdefender.controlplane.certificates import WRITES
from iotdefender.store import certificates

log = structlog.get_logger("iotdefender.brokers")

REFUSED_CERTIFICATES = Gauge("iotdefender_mqtt_refused_certificates",
                             "Certificates the broker refuses: registered, and not ACTIVE")


class RefusingBroker(Protocol):
    """What of the broker this needs (brokers/mosquitto/broker.py)."""

    def deny_certificate(self, certificate_id: str, common_name: str) -> None: ...

    def allow_certificate(self, certificate_id: str) -> None: ...

    @property
    def denied_certificates(self) -> dict[str, str]: ...


class CertificateGate:
    def __init__(self, engine: Engine, broker: RefusingBroker, period_s: float = 30.0) -> None:
        self._engine, self._broker, self._period_s = engine, broker, period_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def written(self, operation_name: str, _params: Any = None) -> None:
        """An API write of this process (its ``on_write`` listener, called from a worker thread)."""
        if operation_name in WRITES:
            self.changed()

    def changed(self) -> None:
        """The certificates may have changed (a write here, or another node's notice)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def refresh(self) -> None:
        """Make the broker's list the database's."""
        refused = await anyio.to_thread.run_sync(self._read)
        held = self._broker.denied_certificates
        for certificate_id, common_name in refused.items():
            if held.get(certificate_id) != common_name:
                self._broker.deny_certificate(certificate_id, common_name)
        for certificate_id in held.keys() - refused.keys():
            self._broker.allow_certificate(certificate_id)
        REFUSED_CERTIFICATES.set(len(refused))
        denied, allowed = len(refused.keys() - held.keys()), len(held.keys() - refused.keys())
        if denied or allowed:
            log.info("mqtt_certificates_refused", refused=len(refused), newly_refused=denied, accepted_again=allowed)

    def _read(self) -> dict[str, str]:
        with self._engine.connect() as conn:
            return certificates.refused(conn)

    async def run(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        while True:
            try:
                await self.refresh()
            except (SQLAlchemyError, OSError) as error:  # the database is away: the list held stays
                log.warning("mqtt_certificates_not_read", error=repr(error))
            try:
                await asyncio.wait_for(self._wake.wait(), self._period_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
