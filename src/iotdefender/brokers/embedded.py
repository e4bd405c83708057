"""The embedded MQTT broker: amqtt 0.12.1 in-process, patched to carry AWS's ``$aws/`` topics.

Why amqtt (stack-measurements §1): it is the only maintained pure-Python broker with plugin hooks
for authentication, topic ACLs and per-message events, so ``iotdefender serve`` needs nothing
else installed. Its limits (MQTT 3.1.1 only, about 10k msg/s, about 50 KB per connection) make it
the small-site default; larger fleets use an external broker (``--mqtt-url``).

Stock amqtt 0.12.1 drops every publish to a ``$`` topic and leaves the session half-dead
(``Broker._handle_message_delivery`` returns False without closing the socket). ``DefenderBroker``
overrides that private method (hence the exact pin): a ``$aws/things/T/defender/metrics/...``
report the ACL allows goes to the report sink; any other ``$`` publish disconnects the client, as
AWS IoT does on an unauthorised publish; other topics go through amqtt unchanged. It also replaces
``_run_broadcast`` so that a message is matched only against the filters that can match it
(``FilterTable``) instead of every client's every filter.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog
from amqtt.broker import Action, Broker
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from iotdefender.brokers.gatekeeper import REPORT_TOPIC, Gatekeeper
from iotdefender.brokers.listeners import ListenerSettings, ReportSink

log = structlog.get_logger("iotdefender.broker")

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
        return may_receive(self.config.gatekeeper, session, topic)


def may_receive(gatekeeper: Gatekeeper, session: Session, topic: str) -> bool:
    """RECEIVE: whoever was allowed to subscribe may receive; the delivery is counted (cloud-side
    ``aws:num-messages-received``)."""
    observer = gatekeeper.observer
    if observer is not None:
        observer.message_received(session.client_id, topic)
    return True


class FilterTable(dict[str, list[tuple[Session, int]]]):
    """amqtt's subscription table (topic filter -> sessions), with its wildcard filters kept apart.

    amqtt matches every published message against every topic filter of every client; with each
    device subscribed to its own reply topics that is thousands of comparisons per reply, and it
    made replies the largest cost of a report at 2,000 devices (bench/pipeline.py). A topic can
    only match its own exact filter or a filter with a wildcard, so those are all ``candidates``
    returns. Every other use of the table is the plain dict's.
    """

    def __init__(self) -> None:
        super().__init__()
        self.wildcards: set[str] = set()

    def __setitem__(self, topic_filter: str, subscriptions: list[tuple[Session, int]]) -> None:
        super().__setitem__(topic_filter, subscriptions)
        if "+" in topic_filter or "#" in topic_filter:
            self.wildcards.add(topic_filter)

    def __delitem__(self, topic_filter: str) -> None:
        super().__delitem__(topic_filter)
        self.wildcards.discard(topic_filter)

    def pop(self, topic_filter: str, *default: Any) -> Any:
        self.wildcards.discard(topic_filter)
        return super().pop(topic_filter, *default)

    def setdefault(self, topic_filter: str, default: Any = None) -> Any:
        if topic_filter not in self:
            self[topic_filter] = default
        return self[topic_filter]

    def clear(self) -> None:
        super().clear()
        self.wildcards.clear()

    def candidates(self, topic: str) -> list[tuple[str, list[tuple[Session, int]]]]:
        found = []
        exact = self.get(topic)
        if exact is not None:
            found.append((topic, exact))
        for topic_filter in self.wildcards:
            subscriptions = self.get(topic_filter)
            if subscriptions is not None:
                found.append((topic_filter, subscriptions))
        return found


class DefenderBroker(Broker):
    def __init__(self, config: dict[str, Any], gatekeeper: Gatekeeper, sink: ReportSink) -> None:
        super().__init__(config)
        self._gatekeeper = gatekeeper
        self._sink = sink
        self._subscriptions = FilterTable()

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[Any]]) -> None:
        """amqtt 0.12.1's ``Broker._run_broadcast`` (hence the exact pin), visiting only the filters
        that can match (``FilterTable.candidates``), capping the QoS of a forced-QoS message (our
        replies) at the subscriber's, checking RECEIVE with the gatekeeper directly, and without
        its per-message debug formatting."""
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        for topic_filter, subscriptions in self._subscriptions.candidates(topic):
            if not self._matches(topic, topic_filter):
                continue
            for target_session, sub_qos in list(subscriptions):
                # MQTT 3.1.1 §3.8.4: delivered at the lower of the publish's and the granted QoS
                # (amqtt sends a forced QoS even above what the subscriber was granted).
                requested = broadcast.get("qos")
                qos = sub_qos if requested is None else min(requested, sub_qos)
                # Our topic plugin is the only one configured (broker_config): ask it directly
                # rather than through amqtt's plugin manager, which schedules a task per call.
                if not may_receive(self._gatekeeper, target_session, topic):
                    self.logger.info(f"{target_session.client_id} not allowed to receive messages from TOPIC {topic}.")
                    continue
                # Retained for sessions that are away but persistent (clean session false, QoS 1/2,
                # not anonymous) [MQTT 3.1.2.4]; dropped for other disconnected sessions.
                if (target_session.transitions.state != "connected" and not target_session.clean_session
                        and qos in (QOS_1, QOS_2) and not target_session.is_anonymous):
                    await self._retain_broadcast_message(broadcast, qos, target_session)
                    continue
                if target_session.transitions.state != "connected":
                    continue
                handler = self._get_handler(target_session)
                if handler:
                    task = asyncio.ensure_future(handler.mqtt_publish(topic, broadcast["data"], qos, retain=False))
                    running_tasks.append(task)

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
