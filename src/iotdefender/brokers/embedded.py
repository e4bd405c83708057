"""The embedded MQTT broker: amqtt 0.12.1 in-process, patched to carry AWS's ``$aws/`` topics.

Why amqtt (stack-measurements §1): it is the only maintained pure-Python broker with plugin hooks
for authentication, topic ACLs and per-message events, so ``iotdefender serve`` needs nothing
else installed. Its limits (MQTT 3.1.1 only, about 10k msg/s, about 50 KB per connection) make it
the small-site default; larger fleets use an external broker (``--mqtt-url``).

Stock amqtt 0.12.1 drops every publish to a ``$`` topic and leaves the session half-dead
(``Broker._handle_message_delivery`` returns False without closing the socket). ``DefenderBroker``
overrides that private method (hence the exact pin): a ``$aws/things/T/defender/metrics/...``
report the ACL allows goes to the report sink; any other ``$`` publish disconnects the client, as
AWS IoT does on an unauthorised publish; other topics go through amqtt unchanged.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from amqtt.broker import Action, Broker
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from iotdefender.brokers.gatekeeper import REPORT_TOPIC, Gatekeeper

log = structlog.get_logger("iotdefender.broker")

ReportSink = Callable[[str, str, bytes], Awaitable[None]]  # (thing name, "json"|"cbor", payload)


class GatekeeperAuthPlugin(BaseAuthPlugin):
    @dataclass
    class Config:
        gatekeeper: Any

    async def authenticate(self, *, session: Session) -> bool | None:
        gatekeeper = self.config.gatekeeper
        identity = gatekeeper.authenticate(session.client_id, session.username, session.password, session.ssl_object)
        session.defender_identity = identity  # type: ignore[attr-defined]
        if gatekeeper.observer is not None:
            gatekeeper.observer.connect_attempt(session.client_id, session.remote_address, identity is not None)
        if identity is None:
            log.info("mqtt_auth_refused", client_id=session.client_id, address=session.remote_address)
        return identity is not None

    async def on_broker_client_disconnected(self, *, client_id: str, client_session: Session) -> None:
        observer = self.config.gatekeeper.observer
        if observer is not None and getattr(client_session, "defender_identity", None) is not None:
            observer.disconnect(client_id)


class GatekeeperTopicPlugin(BaseTopicPlugin):
    @dataclass
    class Config:
        gatekeeper: Any

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool | None:
        if session is None or topic is None:
            return True  # broker-originated messages (our replies)
        identity = getattr(session, "defender_identity", None)
        if action == Action.SUBSCRIBE:
            return self.config.gatekeeper.may_subscribe(identity, topic)
        if action == Action.PUBLISH:
            return self.config.gatekeeper.may_publish(identity, topic)
        observer = self.config.gatekeeper.observer  # RECEIVE: whoever may subscribe may receive
        if observer is not None:
            observer.message_received(session.client_id, topic)
        return True


class DefenderBroker(Broker):
    def __init__(self, config: dict[str, Any], gatekeeper: Gatekeeper, sink: ReportSink) -> None:
        super().__init__(config)
        self._gatekeeper = gatekeeper
        self._sink = sink

    async def _handle_message_delivery(self, client_session: Session, handler: Any,
                                       wait_deliver: asyncio.Future[Any]) -> bool:
        message = wait_deliver.result()
        topic = getattr(message, "topic", None)
        observer = self._gatekeeper.observer
        if not topic or not topic.startswith("$"):
            if topic and observer is not None:
                observer.message_sent(client_session.client_id, topic, len(message.data or b""))
            return await super()._handle_message_delivery(client_session, handler, wait_deliver)
        identity = getattr(client_session, "defender_identity", None)
        match = REPORT_TOPIC.match(topic)
        if match is not None and self._gatekeeper.may_publish(identity, topic):
            if observer is not None:
                observer.message_sent(client_session.client_id, topic, len(message.data or b""))
            await self._sink(match.group(1), match.group(2), bytes(message.data or b""))
            return True
        if match is None:
            self._gatekeeper.may_publish(identity, topic)  # counts the refusal
        log.info("mqtt_publish_refused", client_id=client_session.client_id, topic=topic)
        # Close the connection properly (amqtt would leave a half-dead session behind).
        closed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        closed.set_result(None)
        await self._handle_disconnect(client_session, handler, closed)
        return False


@dataclass(frozen=True)
class ListenerSettings:
    host: str
    port: int
    tls_port: int | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def broker_config(listeners: ListenerSettings, gatekeeper: Gatekeeper) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"{listeners.host}:{listeners.port}"}},
        "plugins": {
            f"{__name__}.GatekeeperAuthPlugin": {"gatekeeper": gatekeeper},
            f"{__name__}.GatekeeperTopicPlugin": {"gatekeeper": gatekeeper},
        },
    }
    if listeners.tls_port is not None:
        # amqtt requests client certificates (CERT_OPTIONAL) when a CA file is given and
        # verifies them against it; the auth plugin then maps the certificate to the identity.
        config["listeners"]["tls"] = {
            "type": "tcp", "bind": f"{listeners.host}:{listeners.tls_port}", "ssl": True,
            "certfile": listeners.cert_file, "keyfile": listeners.key_file, "cafile": listeners.ca_file,
        }
    return config


class EmbeddedBroker:
    """Broker adapter: start/stop the in-process broker and publish replies to devices."""

    def __init__(self, listeners: ListenerSettings, gatekeeper: Gatekeeper, sink: ReportSink) -> None:
        self._broker = DefenderBroker(broker_config(listeners, gatekeeper), gatekeeper, sink)

    async def start(self) -> None:
        await self._broker.start()

    async def stop(self) -> None:
        await self._broker.shutdown()

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        await self._broker.internal_message_broadcast(topic, payload, qos)


def check_tls_files(ca_file: str | None, cert_file: str | None, key_file: str | None) -> None:
    """Fail at start-up, with a clear message, rather than at the first TLS handshake."""
    if not (cert_file and key_file):
        raise ValueError("--mqtt-tls-port needs --mqtt-cert and --mqtt-key (and --mqtt-ca to verify clients)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    if ca_file:
        context.load_verify_locations(ca_file)
