"""Which destinations an event's alert goes to, decided inside the evaluation's transaction.

An event that is stored always has its alert rows, and no alert exists for an event that was not
stored: the rows are written in the transaction that records the event. The event's alert target
comes with it (``Alert``), taken by detection from the profile it evaluated, so routing never has
to look the profile up again. Routing needs only the subscriptions and whether an SNS endpoint is
configured (``AlertRoutes`` is picklable: the detection worker gets it in its configuration).

A topic with no destination (no ``--sns-endpoint-url``, not in ``--alert-subscriptions``) still
gets one row per alert, to ``NO_DESTINATION``: the delivery loop marks it dead at once with the
reason, counts it (``iotdefender_alert_deliveries_total{outcome="no_destination"}``) and logs the
topic once, so a profile whose alerts reach nobody shows in the dead letters, on /metrics and in
the log rather than nowhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.engine import Connection

from iotdefender.alerts.message import alert_message
from iotdefender.alerts.subscriptions import Subscription, Webhook
from iotdefender.engine.evaluator import ViolationEvent
from iotdefender.store import alert_outbox

log = structlog.get_logger("iotdefender.alerts")

SNS_PREFIX = "sns:"
# The destination of an alert whose topic has none: never sent, dead on arrival (outbox.py).
NO_DESTINATION = "none:"
# Every kind of destination this release writes and sends (``kind:`` before the address). A row of
# another kind was written by a newer release sharing the outbox (cluster mode, rolling upgrade):
# the delivery leaves it for a node that knows the kind (outbox.py).
# ``mqtt``: a metrics export's messages (metrics_export.py), sent by a process that has the broker.
KINDS = frozenset({"sns", "webhook", "apprise", "none", "mqtt"})


def kind_of(destination: str) -> str:
    """The kind of an outbox row's ``destination`` (``webhook`` of ``webhook:https://…``)."""
    return destination.split(":", 1)[0]


@dataclass(frozen=True)
class Alert:
    """An event to announce, with the SNS topic of the profile that raised it."""

    event: ViolationEvent
    target_arn: str


def alert_target(profile: Mapping[str, Any] | None) -> str | None:
    """The profile's ``alertTargets.SNS.alertTargetArn``, if it has one."""
    target = ((profile or {}).get("alert_targets") or {}).get("SNS")
    return target["alertTargetArn"] if target else None


@dataclass(frozen=True)
class AlertRoutes:
    subscriptions: Mapping[str, list[Subscription]] = field(default_factory=dict)
    sns_endpoint_url: str | None = None

    def destinations(self, topic_arn: str) -> list[str]:
        out = [f"webhook:{s.url}" if isinstance(s, Webhook) else f"apprise:{s.url}"
               for s in self.subscriptions.get(topic_arn, [])]
        if self.sns_endpoint_url:
            out.append(SNS_PREFIX + topic_arn)
        return out

    def undeliverable(self, topic_arn: str) -> str | None:
        """Why alerts to ``topic_arn`` reach nobody, with how to fix it; None when they go somewhere."""
        if self.destinations(topic_arn):
            return None
        return (f"SNS topic {topic_arn} has no destination: alerts to it are recorded as dead letters and "
                "sent nowhere. Start the service with --sns-endpoint-url (an SNS-compatible endpoint) or list "
                "the topic in --alert-subscriptions (webhooks, Apprise); see docs/alerts.md")

    def unreached_topics(self, profiles: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
        """The SNS topics of ``profiles`` (store rows) that go nowhere, with the profiles naming each."""
        out: dict[str, list[str]] = {}
        for profile in profiles:
            topic = alert_target(profile)
            if topic is not None and self.undeliverable(topic):
                out.setdefault(topic, []).append(profile["name"])
        return out

    def profile_written(self, operation: str, params: Mapping[str, Any], _output: Any = None) -> None:
        """After a successful API write: a security profile given a topic that goes nowhere is
        logged (the API answers as AWS does, which accepts any SNS ARN)."""
        if operation not in ("CreateSecurityProfile", "UpdateSecurityProfile"):
            return
        target = (params.get("alertTargets") or {}).get("SNS")
        topic = target["alertTargetArn"] if target else None
        reason = self.undeliverable(topic) if topic else None
        if reason:
            log.warning("alert_target_unreached", operation=operation, profile=params.get("securityProfileName"),
                        topic=topic, reason=reason)

    def enqueue(self, conn: Connection, alerts: Iterable[Alert]) -> None:
        """One outbox row per destination of each alert, in the caller's transaction."""
        rows = []
        for alert in alerts:
            if alert.event.suppressed:
                continue  # suppressAlerts: recorded and counted, never notified (reference §5.4)
            message = alert_message(alert.event).decode()
            for destination in self.destinations(alert.target_arn) or [NO_DESTINATION]:
                rows.append({"target_arn": alert.target_arn, "destination": destination, "message": message,
                             "created_at": alert.event.at})
        alert_outbox.insert_pending(conn, rows)
