"""Which destinations an event's alert goes to, decided inside the evaluation's transaction.

An event that is stored always has its alert rows, and no alert exists for an event that was not
stored: the rows are written in the transaction that records the event. The event's alert target
comes with it (``Alert``), taken by detection from the profile it evaluated, so routing never has
to look the profile up again. Routing needs only the subscriptions and whether an SNS endpoint is
configured (``AlertRoutes`` is picklable: the detection worker gets it in its configuration).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from iotdefender.alerts.message import alert_message
from iotdefender.alerts.subscriptions import Subscription, Webhook
from iotdefender.engine.evaluator import ViolationEvent
from iotdefender.store import alert_outbox

SNS_PREFIX = "sns:"


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

    def enqueue(self, conn: Connection, alerts: Iterable[Alert]) -> None:
        """One outbox row per destination of each alert, in the caller's transaction."""
        rows = []
        for alert in alerts:
            if alert.event.suppressed:
                continue  # suppressAlerts: recorded and counted, never notified (reference §5.4)
            message = alert_message(alert.event).decode()
            for destination in self.destinations(alert.target_arn):
                rows.append({"target_arn": alert.target_arn, "destination": destination, "message": message,
                             "created_at": alert.event.at})
        alert_outbox.insert_pending(conn, rows)
