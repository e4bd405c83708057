"""The broker refuses the certificates registered in another status than ACTIVE, and under
``--mqtt-certificates registered`` every certificate not registered ACTIVE; a certificate attached
to things (AttachThingPrincipal) connects only as one of them.

The database is the truth (controlplane/certificates.py writes it); the broker's plugin holds the
list of refused certificate ids (and, under ``registered``, of those registered ACTIVE, and in every
mode the things each attached certificate names) and enforces it at every CONNECT, closing a device
already connected with a certificate as it is refused (or under a name it no longer allows). This
keeps the two equal.

A write names the certificate it changed (an API write of this process, or another node's notice),
and only that certificate's row is read again: reading the whole list at every write made a bulk
revocation quadratic (1,000 UpdateCertificate calls read 300,000 rows, and a list of 100,000
refused certificates would be read whole at each call). The whole lists are read at start and
after a notice may have been missed (a reconnection to NATS). Every ``period_s`` without a write
the certificates written since the last read began are read again, so a lost notice is made good
within that period; and every ``WHOLE_EVERY`` periods the whole lists, which make good what the
writers' stamps cannot show (a clock skewed past ``RECENT_MARGIN_S``, a row changed by hand).
Reading the whole lists every period cost 0.1-0.5 s of Python at 100,000 certificates registered
ACTIVE under ``registered``, in a thread that takes turns with the event loop, and up to 0.25 s
more applying them on the loop (an outside-in test: single reports answered in 62-132 ms at each
read, against 7 ms); it grows with the registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Set as AbstractSet
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
ACCEPTED_CERTIFICATES = Gauge("iotdefender_mqtt_accepted_certificates",
                              "Certificates registered ACTIVE, the only ones the broker lets connect under "
                              "--mqtt-certificates registered (0 otherwise: not tracked)")
ATTACHED_CERTIFICATES = Gauge("iotdefender_mqtt_attached_certificates",
                              "Certificates attached to things (AttachThingPrincipal): each connects only as one of them")


class RefusingBroker(Protocol):
    """What of the broker this needs (brokers/mosquitto/broker.py)."""

    def deny_certificates(self, refused: dict[str, str]) -> None: ...

    def allow_certificates(self, certificate_ids: Iterable[str]) -> None: ...

    def accept_certificates(self, certificate_ids: Iterable[str]) -> None: ...

    def attach_certificates(self, attachments: Mapping[str, tuple[str, tuple[str, ...]]]) -> None: ...

    @property
    def registered_certificates_only(self) -> bool: ...

    @property
    def denied_certificates(self) -> Mapping[str, str]: ...

    @property
    def accepted_certificates(self) -> AbstractSet[str]: ...

    @property
    def attached_certificates(self) -> Mapping[str, tuple[str, tuple[str, ...]]]: ...


#: A period's read goes back this far before the last read began: the writers' clocks (each node
#: stamps its writes, ``last_modified_date``) and transactions still open when it began.
RECENT_MARGIN_S = 60.0
#: Periods between whole reads (five minutes at the default period).
WHOLE_EVERY = 10


def _named(read: certificates.Standing) -> set[str]:
    """Every certificate a read found something of."""
    return read.refused.keys() | read.active | read.attached.keys()


class CertificateGate:
    def __init__(self, engine: Engine, broker: RefusingBroker, period_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        """``clock``: epoch seconds, as the writers stamp ``last_modified_date`` (ServiceContext.now)."""
        self._engine, self._broker, self._period_s, self._clock = engine, broker, period_s, clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._pending: set[str] = set()  # certificate ids to read again
        self._whole = False  # read the whole lists at the next pass
        self._recent = False  # read what was written since the last read began, at the next pass
        self._read_began: float | None = None  # when the last whole or recent read began (``clock``)
        self._quiet_periods = 0  # periods that ended without a write since the last whole read
        self._warned_none_active = False

    def written(self, operation_name: str, params: Any = None, output: Any = None) -> None:
        """An API write of this process (its ``on_write`` listener, called from a worker thread)."""
        if operation_name in WRITES:
            certificate_id = written_certificate(params, output)
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
        """Make the broker's whole lists the database's."""
        began = self._clock()
        read = await anyio.to_thread.run_sync(self._read, None)
        self._read_began, self._quiet_periods = began, 0
        if self._broker.registered_certificates_only and not read.active and not self._warned_none_active:
            # Every device is refused: most likely a fleet whose certificates were never registered.
            log.warning("mqtt_no_certificate_registered_active",
                        detail="--mqtt-certificates registered lets in only certificates registered ACTIVE, and "
                               "none is: no device can connect until its certificate is registered "
                               "(RegisterCertificate or RegisterCertificateWithoutCA with status ACTIVE)")
            self._warned_none_active = True
        held = (self._broker.denied_certificates.keys() | self._broker.accepted_certificates
                | self._broker.attached_certificates.keys())
        self._apply(held | _named(read), read)

    async def _refresh_recent(self) -> None:
        """The certificates written since the last read began (less RECENT_MARGIN_S)."""
        if self._read_began is None:
            await self.refresh()
            return
        began = self._clock()
        read = await anyio.to_thread.run_sync(self._read, None, self._read_began - RECENT_MARGIN_S)
        self._apply(_named(read), read)
        self._read_began = began

    async def _refresh_some(self, certificate_ids: set[str]) -> None:
        read = await anyio.to_thread.run_sync(self._read, sorted(certificate_ids))
        self._apply(certificate_ids, read)

    def _apply(self, certificate_ids: Iterable[str], read: certificates.Standing) -> None:
        """Each of ``certificate_ids`` as the database has it: refused (in ``read.refused``, with its
        common name), registered ACTIVE (in ``read.active``, read only under
        registered_certificates_only), or neither; attached to the things of ``read.attached``, or
        to none; what changes is told to the broker in as few messages as hold it."""
        refused, active = read.refused, read.active
        held_denied, held_accepted = self._broker.denied_certificates, self._broker.accepted_certificates
        held_attached = self._broker.attached_certificates
        registered_only = self._broker.registered_certificates_only
        denied: dict[str, str] = {}
        accepted: list[str] = []
        allowed: list[str] = []
        attachments: dict[str, tuple[str, tuple[str, ...]]] = {}
        for key in certificate_ids:
            wanted = read.attached.get(key)
            if wanted != held_attached.get(key) and (wanted is not None or key in held_attached):
                attachments[key] = wanted or (held_attached[key][0], ())
            if key in refused:
                if held_denied.get(key) != refused[key]:
                    denied[key] = refused[key]
            elif registered_only and key in active:
                if key not in held_accepted:
                    accepted.append(key)  # the broker's accept takes it off its refused too
            elif key in held_denied or key in held_accepted:
                allowed.append(key)
        # Attachments first: a certificate refused next is then also closed under its things' names.
        if attachments:
            self._broker.attach_certificates(attachments)
        if denied:
            self._broker.deny_certificates(denied)
        if accepted:
            self._broker.accept_certificates(accepted)
        if allowed:
            self._broker.allow_certificates(allowed)
        if denied or accepted or allowed or attachments:
            log.info("mqtt_certificate_lists_changed", refused=len(self._broker.denied_certificates),
                     accepted=len(self._broker.accepted_certificates),
                     attached=len(self._broker.attached_certificates), newly_refused=len(denied),
                     newly_active=len(accepted), unlisted=len(allowed), attachments_changed=len(attachments))
        REFUSED_CERTIFICATES.set(len(self._broker.denied_certificates))
        ACCEPTED_CERTIFICATES.set(len(self._broker.accepted_certificates))
        ATTACHED_CERTIFICATES.set(len(self._broker.attached_certificates))

    def _read(self, among: list[str] | None, since: float | None = None) -> certificates.Standing:
        """The refused certificates (and, under registered_certificates_only, the ACTIVE ones), all
        or those of ``among``; with ``since``, those written then or after, ACTIVE ones in either mode
        (one made ACTIVE again leaves the refused list, and only a read of it can say so)."""
        registered_only = self._broker.registered_certificates_only
        with self._engine.connect() as conn:
            return certificates.standing(conn, among, with_active=registered_only or since is not None,
                                         modified_since=since, deleted_refused=not registered_only)

    async def run(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        self._whole = True
        while True:
            whole, recent, some = self._whole, self._recent, self._pending
            self._whole, self._recent, self._pending = False, False, set()
            try:
                if whole:
                    await self.refresh()
                else:
                    if recent:
                        await self._refresh_recent()
                    if some:
                        await self._refresh_some(some)
            except (SQLAlchemyError, OSError) as error:  # the database is away: the list held stays
                log.warning("mqtt_certificates_not_read", error=repr(error))
                self._whole = True  # what was asked is read again, whole, at the next pass
            try:
                await asyncio.wait_for(self._wake.wait(), self._period_s)
            except asyncio.TimeoutError:
                self._quiet_periods += 1
                if self._quiet_periods >= WHOLE_EVERY:
                    self._whole = True
                else:
                    self._recent = True
            self._wake.clear()
