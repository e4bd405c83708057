"""Who a device is and what it may do: the MQTT policy's settings and every refusal counted.

The policy itself runs inside the broker, in Mosquitto's plugin (brokers/mosquitto/
defender_plugin.c), which documents the rules: the client id is the identity (checked against the
username with ``--mqtt-auth password``, the certificate's CN with ``cert``); a client may publish
reports and read replies only under its own thing name (``$aws/things/${iot:ClientId}/...``, the
usual AWS IoT policy) unless ``acl="any"``, which AWS allows when a policy grants it ("Thing-1
publishes on $aws/things/Thing-2/..." — reference §4.1). This module holds what the service
needs of it: the settings, the password file's validation, and the refusal counters fed by the
plugin's events.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import Counter as PromCounter

from iotdefender.brokers.observer import NULL_OBSERVER, BrokerObserver, observes_traffic
from iotdefender.log_limits import LimitedLog

log = structlog.get_logger("iotdefender.broker")

REPORT_TOPIC = re.compile(r"^\$aws/things/([^/]+)/defender/metrics/(json|cbor)$")

MQTT_DENIALS = PromCounter("iotdefender_mqtt_denials", "MQTT requests refused by the gatekeeper", ["reason"])
MQTT_THROTTLED = PromCounter("iotdefender_mqtt_publishes_throttled",
                             "PUBLISHes dropped because their connection was past --mqtt-publish-rate")
REJECTED_BY_BROKER = PromCounter(
    "iotdefender_mqtt_reports_rejected_by_broker",
    "Reports the broker rejected itself, by code: Throttled when their thing already had as many reports waiting "
    "for the service's answers as the broker hands over, ServiceUnavailable while the service's connection was "
    "away, ServiceOverloaded while the broker held as many bytes of reports for the service as it may (all three "
    "answered), InvalidThingName for any of them of a thing name over 128 bytes (not answered)", ["code"])
SUBSCRIPTIONS_REFUSED = PromCounter("iotdefender_mqtt_subscriptions_refused",
                                    "Topic filters refused because their connection held --mqtt-max-subscriptions already")
SUBSCRIPTIONS_LOG = LimitedLog(log, "mqtt_subscriptions_refused", "iotdefender_mqtt_subscriptions_refused_total")
# One line per thing and batch of events would be a line every 50 ms per flooding device.
REJECTED_LOG = LimitedLog(log, "mqtt_report_rejected_by_broker", "iotdefender_mqtt_reports_rejected_by_broker_total")
_BROKER_REJECTIONS = {
    "Throttled": "answered by the broker: the thing's earlier reports still wait for their answers",
    "ServiceUnavailable": "answered by the broker: the service's connection was away",
    "ServiceOverloaded": "answered by the broker: it held as many bytes of reports for the service as it may",
    "InvalidThingName": "not answered: a report the broker did not hand to the service, of a name over 128 bytes",
}


def check_password_file(path: Path) -> int:
    """``username:secret`` lines (``#`` comments, blank lines); a secret starting with ``$argon2``
    is an Argon2 PHC hash. Raises ValueError on a malformed line; returns the number of users."""
    users = 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, _ = line.partition(":")
        if not sep or not user.strip():
            raise ValueError(f"{path}:{number}: expected username:password")
        users += 1
    return users


@dataclass
class Gatekeeper:
    auth: str = "none"  # none | password | cert
    acl: str = "own"  # own | any
    observer: BrokerObserver = NULL_OBSERVER  # cloud-side metrics: told of every refused PUBLISH or SUBSCRIBE
    publish_rate: float = 100.0  # PUBLISHes a second per connection; beyond them dropped (0: no limit)
    max_subscriptions: int = 50  # topic filters a connection may hold; a SUBSCRIBE past them refused (0: no limit)

    @property
    def observes_traffic(self) -> bool:
        return observes_traffic(self.observer)

    def record_throttled(self, client_id: str | None, count: int) -> None:
        """PUBLISHes the broker dropped for their connection's rate: counted, not a failure (AWS IoT
        Core drops them so too, and the device did nothing it may not do)."""
        MQTT_THROTTLED.inc(count)

    def record_rejected_by_broker(self, thing: str, code: str, count: int) -> None:
        """Reports of ``thing`` the broker rejected ``code`` itself (defender_plugin.c)."""
        REJECTED_BY_BROKER.labels(code).inc(count)
        REJECTED_LOG(code, thing=thing, code=code, reports=count, detail=_BROKER_REJECTIONS.get(code, code))

    def record_subscriptions_refused(self, client_id: str, count: int) -> None:
        """SUBSCRIBEs refused because their connection held ``max_subscriptions`` filters already: not
        authorization failures (the device may subscribe there; it holds too many)."""
        SUBSCRIPTIONS_REFUSED.inc(count)
        SUBSCRIPTIONS_LOG("subscriptions_refused", client_id=client_id, refused=count, limit=self.max_subscriptions)

    def record_denial(self, client_id: str | None, reason: str, topic: str | None = None,
                      at: float | None = None) -> None:
        """Count a refusal by reason; a refused PUBLISH or SUBSCRIBE (with its topic) is also an
        authorization failure for the cloud-side metrics (``at``: when the broker saw it)."""
        MQTT_DENIALS.labels(reason).inc()
        if topic is not None:
            self.observer.authorization_failure(client_id, topic, at=at)
