"""External broker mode: join an existing MQTT broker (Mosquitto, EMQX, HiveMQ, NATS) as a client.

The operator's broker authenticates devices and enforces its ACLs; we subscribe to both report
topics and answer on the reply topics like AWS does. Why gmqtt (stack-measurements §2): it
received about 3x paho's and 7x aiomqtt's message rate on the same broker and is asyncio-native.

Reconnection: gmqtt retries on its own with a fixed delay; we grow that delay exponentially
(1 s, 2 s, 4 s … 30 s) on every disconnect and reset it on connect, and subscriptions are renewed
on every (re)connection. A report is answered ``accepted`` only once it is durable, whatever
happened to the connection in between (the reply is published on the live connection).

The reader of an operator's broker keeps one persistent session (``--mqtt-client-id``, clean
session off): while no reader is connected — the service restarting, a cluster's intake moving
to another broker node — the broker keeps the subscriptions and queues the QoS 1 reports for the
session (MQTT 3.1.1 §3.1.2.4; Mosquitto up to ``max_queued_messages``, 1,000 by default), and
the next reader, connecting with the same client id, gets them. A clean session lost every report
published in that gap (AWS's Device Defender agent does not resend a report left unanswered).
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog
from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311
from gmqtt.storage import PersistentStorage

from iotdefender.brokers import coalescing
from iotdefender.brokers.gatekeeper import REPORT_TOPIC
from iotdefender.brokers.listeners import ReportSink

log = structlog.get_logger("iotdefender.broker.external")

REPORT_FILTERS = ("$aws/things/+/defender/metrics/json", "$aws/things/+/defender/metrics/cbor")
_MAX_DELAY_S = 30.0


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_broker_url(url: str) -> BrokerUrl:
    """``mqtt[s]://[user[:password]@]host[:port]``; ports default to 1883 and 8883."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"--mqtt-url {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    tls = parts.scheme == "mqtts"
    return BrokerUrl(parts.hostname, parts.port or (8883 if tls else 1883), tls,
                     unquote(parts.username) if parts.username else None,
                     unquote(parts.password) if parts.password else None)


class _ReplayOnlyWhatCameBefore(PersistentStorage):
    """gmqtt's queue of unacknowledged QoS 1 publishes, replayed after a reconnection: only those
    queued before it. gmqtt 0.8 replays the whole queue in a task it schedules at CONNACK, and a
    persistent session's backlog is delivered right after the CONNACK, so the answers published
    to it meanwhile (a rejection needs no database) went out twice (an operator's trial: every
    ``Throttled`` of a restart's backlog reached its device twice)."""

    def __init__(self) -> None:
        super().__init__()
        self._replayable: set[int] | None = None

    def connected(self) -> None:
        """Called on CONNACK (before any message of the new connection): what is queued now is
        what the replay is for."""
        self._replayable = {mid for mid, _ in super().get_all()}

    def get_all(self) -> list[tuple[int, bytes]]:
        queued: list[tuple[int, bytes]] = super().get_all()
        return queued if self._replayable is None else [(mid, raw) for mid, raw in queued if mid in self._replayable]


class ExternalBroker:
    """Broker adapter over a client connection (start, stop, publish_now), also used by ``MosquittoBroker``."""

    def __init__(self, url: BrokerUrl, sink: ReportSink, ca_file: str | None = None,
                 client_id: str | None = None, report_filters: tuple[str, ...] = REPORT_FILTERS,
                 other_filters: tuple[str, ...] = (),
                 on_other: Callable[[str, bytes], None] | None = None,
                 on_connected: Callable[[], None] | None = None, persistent: bool = False,
                 keepalive_s: int = 30) -> None:
        """``other_filters`` are subscribed too, their messages go to ``on_other``; ``on_connected``
        runs on every (re)connection (the default broker uses both for its plugin's channel, which
        also carries the reports, so it subscribes to no ``report_filters``). ``persistent``: the
        broker keeps the session (its subscriptions and queued messages) while this client is away.
        ``keepalive_s``: MQTT keep alive, 0 for none (the broker then never drops the connection
        for silence)."""
        self._url = url
        self._report_filters = report_filters
        self._sink = sink
        self._other_filters = other_filters
        self._on_other = on_other
        self._on_connected = on_connected
        self._ca_file = ca_file
        self._persistent = persistent
        self._keepalive_s = keepalive_s
        self.client_id = client_id or f"iotdefender-{uuid.uuid4().hex[:12]}"
        self._client = self._new_client()
        self._connected = asyncio.Event()
        self._stopping = False

    def _new_client(self) -> Client:
        """A gmqtt client of its own per start: one that was disconnected and told to stop
        reconnecting is not reused (cluster mode stops and starts the intake of an external broker
        as a node takes and loses the intake lock)."""
        self._queue = _ReplayOnlyWhatCameBefore()
        client = Client(self.client_id, clean_session=not self._persistent, persistent_storage=self._queue)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})
        if self._url.username is not None:
            client.set_auth_credentials(self._url.username, self._url.password)
        return client

    def _on_connect(self, client: Client, flags: Any, rc: int, properties: Any) -> None:
        self._queue.connected()
        coalescing.install(client)
        client.reconnect_delay = 1
        for topic_filter in self._report_filters:
            client.subscribe(topic_filter, qos=1)
        for topic_filter in self._other_filters:
            client.subscribe(topic_filter, qos=0)
        self._connected.set()
        if self._on_connected is not None:
            self._on_connected()
        log.info("mqtt_client_connected", host=self._url.host, port=self._url.port, client_id=self.client_id)

    def _on_disconnect(self, client: Client, packet: Any, exc: Any = None) -> None:
        self._connected.clear()
        if self._stopping:
            return
        client.reconnect_delay = min(max(client.reconnect_delay, 1) * 2, _MAX_DELAY_S)
        # Named as its pair above: the broker may be the service's own Mosquitto, not an external one.
        log.warning("mqtt_client_disconnected", host=self._url.host, port=self._url.port, retry_in_s=client.reconnect_delay)

    def _on_message(self, client: Client, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        """Synchronous: gmqtt runs a coroutine callback as one task per message (measured: a few
        per cent of the event loop at 5,000 reports/s), a plain function in place."""
        match = REPORT_TOPIC.match(topic)
        if match is not None:
            self._sink(match.group(1), match.group(2), bytes(payload))
        elif self._on_other is not None:
            self._on_other(topic, bytes(payload))
        return 0

    async def start(self) -> None:
        if self._stopping:  # started again after a stop
            self._client, self._stopping = self._new_client(), False
            self._connected.clear()
        context: ssl.SSLContext | bool = False
        if self._url.tls:
            context = ssl.create_default_context(cafile=self._ca_file)
        await self._client.connect(self._url.host, self._url.port, ssl=context, version=MQTTv311, keepalive=self._keepalive_s)
        await asyncio.wait_for(self._connected.wait(), timeout=30)

    @property
    def connected(self) -> bool:
        """Whether the connection is up (connected and subscribed)."""
        return self._connected.is_set()

    def hand_over(self) -> None:
        """Stop taking the connection back: the next reader of the session (the same client id:
        a cluster's intake moving to another node) may take it from now on, and this one stays
        disconnected; until then it still delivers the answers of the reports in flight. Without
        this, a reader that had lost its lock reconnected every 2 s while it answered those, each
        time taking the session from the new reader (Mosquitto: 7 takeovers in 12 s, the reports
        that reached it meanwhile answered ServiceUnavailable)."""
        self._stopping = True
        self._client.stop_reconnect()

    async def stop(self) -> None:
        self.hand_over()  # our own DISCONNECT is not worth a warning
        await self._client.disconnect()

    def publish_now(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Queue a PUBLISH on the connection (gmqtt does not wait for the acknowledgement)."""
        self._client.publish(topic, payload, qos=qos)
