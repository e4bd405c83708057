"""One ``send()`` per event-loop iteration for the service's own MQTT connection.

The service's connection carries every report's PUBACK and every reply: at 5,000 reports/s that is
more than 10,000 small packets a second, and gmqtt writes each one to the transport on its own
(uvloop sends at once, so one system call per packet). Measured with py-spy at 15,000 devices,
those writes were about a tenth of the service's event loop. Packets written during one iteration
of the loop are joined and sent together at its end: the same bytes in the same order, one system
call instead of dozens, and no added delay (the flush runs before the loop waits for I/O again).

gmqtt 0.8 (pinned exactly) offers no hook for its transport, so ``install`` swaps the transport
object that its connection and protocol hold; if those attributes are not there (another gmqtt),
nothing is changed and packets are written one by one as before.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast


class CoalescingTransport:
    """A transport whose ``write`` calls of one loop iteration become one ``write``."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()  # a DISCONNECT written just before close still goes out
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def install(client: Any) -> bool:
    """Coalesce the writes of a connected gmqtt ``Client``; True if installed (idempotent)."""
    # gmqtt's private, untyped internals: checked at run time here, not by the type checker.
    connection: Any = getattr(client, "_connection", None)
    protocol: Any = getattr(connection, "_protocol", None)
    transport: Any = getattr(connection, "_transport", None)
    if protocol is None or transport is None or getattr(protocol, "_transport", None) is not transport:
        return isinstance(transport, CoalescingTransport)
    coalescing = CoalescingTransport(cast(asyncio.Transport, transport))  # not None: checked above
    connection._transport = coalescing
    protocol._transport = coalescing
    return True
