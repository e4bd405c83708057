"""Cloud-side metrics from a NATS server with its MQTT listener: system events and /connz.

NATS publishes, to its system account, ``$SYS.ACCOUNT.<acc>.CONNECT`` / ``.DISCONNECT`` and
``$SYS.SERVER.<id>.CLIENT.AUTH.ERR`` for every client, MQTT ones included (client_type "mqtt").
The events name the connection (cid) and its address; the MQTT client id is read from the
monitoring endpoint (``/connz?cid=N&state=all``, field ``mqtt_client``), which also gives each
connection's message and byte counters: polling it turns counters into per-window message counts.

What NATS does not give, and therefore counts in no topic dimension: the topic of each message, and
the size of each message (``aws:message-byte-size`` is the average size over the poll interval).
"""

from __future__ import annotations

import asyncio
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import httpx
import nats
import orjson
import structlog

from iotdefender.cancellation import cancel_and_wait

log = structlog.get_logger("iotdefender.cloud.nats")

#: Open connections asked for per /connz request (nats-server pages them, 1,024 by default).
CONNZ_PAGE = 10_000

SUBJECTS = ("$SYS.ACCOUNT.*.CONNECT", "$SYS.ACCOUNT.*.DISCONNECT", "$SYS.SERVER.*.CLIENT.AUTH.ERR")


@dataclass
class _Connection:
    client_id: str
    in_msgs: int = 0
    in_bytes: int = 0
    out_msgs: int = 0


class NatsEventReader:
    def __init__(self, events_url: str, monitor_url: str, sink: Any, poll_s: float = 1.0,
                 ignore: Container[str] = frozenset(), connz_page: int = CONNZ_PAGE,
                 monitor_transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._events_url = events_url
        self._monitor = monitor_url.rstrip("/")
        self._sink = sink
        self._poll_s = poll_s
        self._connz_page = connz_page
        self._ignore = ignore
        # By (server id, connection id): a restarted nats-server numbers its connections from 1
        # again, under a new server id.
        self._connections: dict[tuple[str, int], _Connection] = {}
        self._server: str | None = None  # the id of the server /connz answered for last
        self._nc: Any = None
        self._http: httpx.AsyncClient | None = None
        self._monitor_transport = monitor_transport  # how /connz is reached (None: httpx's own)
        self._poller: asyncio.Task[None] | None = None
        self._adopted = False  # whether the connections open at the start were read (``_poll_once``)
        # The connections whose DISCONNECT came during the current poll: a page read before it
        # still lists them open, and following them again counted their whole life twice.
        self._ended: set[tuple[str, int]] = set()

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=5, transport=self._monitor_transport)
        self._nc = await nats.connect(self._events_url, max_reconnect_attempts=-1, reconnect_time_wait=2)
        for subject in SUBJECTS:
            await self._nc.subscribe(subject, cb=self._on_event)
        # nats-py only queues the SUBs: a connection opened before the server had them gave no
        # CONNECT event, and its messages were never counted. A flush's PONG says it has them.
        await self._nc.flush()
        # The connections open already (a restart, or a standby taking over the reading): counted
        # from now, at the counters they have; before, they were never counted until they
        # reconnected, and their DISCONNECT counted their whole life's messages once more.
        # Until a poll succeeds (the monitoring endpoint may be away), the poller adopts them.
        await self._poll()
        self._poller = asyncio.create_task(self._poll_forever(), name="nats-connz")
        log.info("nats_events_started", monitor=self._monitor, connections=len(self._connections))

    async def stop(self) -> None:
        await cancel_and_wait([self._poller])
        if self._nc is not None:
            await self._nc.close()
        if self._http is not None:
            await self._http.aclose()

    async def _client_id(self, cid: int) -> str | None:
        """The MQTT client id of a connection. NATS 2.9's ``/connz?cid=N&state=all`` searches only
        closed connections (probed), so ask for the open ones first, then the closed ones."""
        assert self._http is not None
        for state in ("open", "closed"):
            response = await self._http.get(f"{self._monitor}/connz", params={"cid": cid, "state": state})
            connections = response.json().get("connections") or []
            if connections:
                return connections[0].get("mqtt_client")
        return None

    async def _on_event(self, msg: Any) -> None:
        try:
            event = orjson.loads(msg.data)
            client = event.get("client") or {}
            if client.get("client_type") != "mqtt":
                return
            cid = client.get("id")
            if not isinstance(cid, int):
                return  # every NATS client event carries its connection id; without one it cannot be followed
            key = ((event.get("server") or {}).get("id") or "", cid)
            # A connection followed already is named: no lookup (one HTTP request per event, in
            # turn, made a storm of connects count some attempts a window after their messages).
            followed = self._connections.get(key)
            name = (client.get("name") or client.get("mqtt_client") or (followed.client_id if followed else None)
                    or await self._client_id(cid))
            if not name or name in self._ignore:
                return
            if msg.subject.endswith(".CONNECT"):
                # Read by a poll before its event came: counted from then already (a reset counts
                # its first messages twice).
                self._connections.setdefault(key, _Connection(name))
                self._sink.connect_attempt(name, client.get("host"), True)
            elif msg.subject.endswith(".AUTH.ERR"):
                self._sink.connect_attempt(name, client.get("host"), False)
            elif msg.subject.endswith(".DISCONNECT"):
                known = self._connections.pop(key, None) or _Connection(name)
                self._ended.add(key)
                sent, received = event.get("sent") or {}, event.get("received") or {}
                # From the server's side: "sent" is what the client sent it (connz in_msgs).
                self._count(known, sent.get("msgs", 0), sent.get("bytes", 0), received.get("msgs", 0))
                self._sink.disconnect(name)
        except Exception:
            log.exception("nats_event_failed", subject=msg.subject)

    def _count(self, connection: _Connection, in_msgs: int, in_bytes: int, out_msgs: int) -> None:
        sent = max(0, in_msgs - connection.in_msgs)
        sent_bytes = max(0, in_bytes - connection.in_bytes)
        received = max(0, out_msgs - connection.out_msgs)
        connection.in_msgs, connection.in_bytes, connection.out_msgs = in_msgs, in_bytes, out_msgs
        if sent or received:
            self._sink.message_counts(connection.client_id, sent, sent_bytes, received)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            await self._poll()

    async def _poll(self) -> None:
        """One poll, adopting the connections open until one has succeeded; a failure is logged
        and the next poll tries again."""
        try:
            await self._poll_once(adopt=not self._adopted)
            self._adopted = True
        except Exception:
            log.warning("nats_connz_poll_failed", exc_info=True)

    async def _poll_once(self, adopt: bool) -> None:
        """Every open connection's counters since the last poll. One not known from an event is
        followed from here: with ``adopt`` (at the start), from the counters it has (what it sent
        before was counted by the reader before, or is lost with it), and the device is connected
        from its address; after, from 0: it opened after the start (every open one was read then),
        and its CONNECT event, which counts the attempt, has not come yet."""
        assert self._http is not None
        self._ended.clear()  # a connection that ended before this poll is in none of its pages
        offset = 0
        while True:  # in pages: one request of at most 100,000 left the connections beyond uncounted
            response = await self._http.get(f"{self._monitor}/connz", params={
                "state": "open", "offset": offset, "limit": self._connz_page})
            page = orjson.loads(response.content)
            server = self._answering(page.get("server_id") or "")
            connections = page.get("connections") or []
            for connection in connections:
                key = (server, connection.get("cid"))
                known = self._connections.get(key)
                if known is None:
                    if key in self._ended:  # read open, then its DISCONNECT came (counted there)
                        continue
                    known = self._follow(key, connection, adopt)
                    if known is None:
                        continue
                self._count(known, connection.get("in_msgs", 0), connection.get("in_bytes", 0),
                            connection.get("out_msgs", 0))
            # Connections that open or close between pages shift the rest: one may be read
            # twice (its counters moved by 0 the second time) or wait for the next poll
            # (they are cumulative, so nothing is lost).
            offset += len(connections)
            if not connections or offset >= page.get("total", 0):
                break

    def _answering(self, server: str) -> str:
        """The server that answered /connz. Another than before: the server restarted (its
        connections before ended with it, without events; their entries are dropped) or the
        monitor URL now reaches another one. Its connections are new to the reader: counted
        from 0."""
        if server != self._server:
            if self._server is not None:
                log.warning("nats_server_changed", before=self._server, now=server)
                for key in [key for key in self._connections if key[0] != server]:
                    del self._connections[key]
            self._server = server
        return server

    def _follow(self, key: tuple[str, Any], connection: dict[str, Any], adopt: bool) -> _Connection | None:
        """A device's connection first read in ``/connz`` (None: no device's)."""
        name = connection.get("mqtt_client")
        if not isinstance(key[1], int) or not name or name in self._ignore:
            return None
        known = self._connections[key] = _Connection(name)
        if adopt:
            known.in_msgs, known.in_bytes = connection.get("in_msgs", 0), connection.get("in_bytes", 0)
            known.out_msgs = connection.get("out_msgs", 0)
            self._sink.connection_open(name, connection.get("ip"))
        return known
