"""Control-plane changes reach every node: a core-NATS notice on ``iotdefender.control.changed``.

Every node caches the control plane (``MonitoringIndex``: profiles, attachments, groups, custom
metrics); an api node that writes it publishes a notice after the commit and every node, itself
included, drops its caches when the notice arrives, so a profile change is applied by every
detect node and broker node within the notice's delivery time (milliseconds on a LAN).

Why NATS and not PostgreSQL LISTEN/NOTIFY: every node already holds a NATS connection (that
reconnects by itself), while LISTEN needs one more dedicated database connection per node, kept
outside the pool and re-established by hand. Both are at most once: a node that was disconnected
when a notice went out would keep a stale cache, so a node also drops its caches whenever its NATS
connection comes back (``reconnected``), which covers every notice it may have missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

log = structlog.get_logger("iotdefender.cluster")

CONTROL_SUBJECT = "iotdefender.control.changed"


class ControlNotices:
    """Publishes this node's control-plane changes and applies everyone's."""

    def __init__(self, nc: Client, node_id: str, invalidate: Sequence[Callable[[], None]],
                 subject: str = CONTROL_SUBJECT) -> None:
        self._nc, self._node_id, self._invalidate, self._subject = nc, node_id, tuple(invalidate), subject
        self._loop: asyncio.AbstractEventLoop | None = None
        self.received = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

        async def notice(msg: Msg) -> None:
            self.received += 1
            self.apply()

        await self._nc.subscribe(self._subject, cb=notice)

    def apply(self) -> None:
        """Drop every cache of the control plane (a notice, or a reconnection that may have missed some)."""
        for invalidate in self._invalidate:
            try:
                invalidate()
            except Exception:  # one cache that cannot be dropped must not keep the others stale
                log.exception("cluster.invalidate_failed")

    def changed(self) -> None:
        """The ``on_change`` listener of the API (called from its worker threads, after commit)."""
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._publish()))

    async def _publish(self) -> None:
        try:
            await self._nc.publish(self._subject, self._node_id.encode())
        except Exception as error:  # this node's caches are dropped already; the others' after their reconnect
            log.warning("cluster.control_notice_not_sent", error=repr(error))


class KeyedNotices:
    """Notices that name what changed (certificate ids, ``brokers/certificate_gate.py``): each node
    reads again only that. Like ``ControlNotices`` they are at most once, so a node that may have
    missed some (its NATS connection came back: ``apply``) reads everything again."""

    def __init__(self, nc: Client, subject: str, on_keys: Callable[[list[str]], None],
                 on_missed: Callable[[], None]) -> None:
        self._nc, self._subject, self._on_keys, self._on_missed = nc, subject, on_keys, on_missed
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

        async def notice(msg: Msg) -> None:
            keys = [key for key in msg.data.decode(errors="replace").split(",") if key]
            if keys:
                self._on_keys(keys)
            else:  # the writer could not tell what it changed
                self._on_missed()

        await self._nc.subscribe(self._subject, cb=notice)

    def apply(self) -> None:
        """Everything may have changed (the reconnection hook ``ControlNotices`` shares)."""
        self._on_missed()

    def publish(self, keys: Sequence[str]) -> None:
        """Tell every node, this one included, that ``keys`` changed (from any thread; none: anything)."""
        loop = self._loop
        if loop is not None:
            payload = ",".join(keys).encode()
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._publish(payload)))

    async def _publish(self, payload: bytes) -> None:
        try:
            await self._nc.publish(self._subject, payload)
        except Exception as error:  # the other nodes read everything again within their period
            log.warning("cluster.keyed_notice_not_sent", subject=self._subject, error=repr(error))
