"""Local subscriptions of SNS topic ARNs, for sites without an SNS service.

A JSON file given with ``--alert-subscriptions`` maps a topic ARN (the ``alertTargetArn`` of a
profile's ``alertTargets.SNS``) to webhooks::

    {"arn:aws:sns:us-east-1:123456789012:dd-alerts": [
        {"webhook": "https://ops.example/hooks/dd", "secret": "shared-hmac-secret"}
    ]}

Each POST carries ``X-Iotdefender-Signature: sha256=<hex HMAC-SHA256 of timestamp + "." + body>``
and ``X-Iotdefender-Timestamp`` so receivers can verify origin and freshness.

For people rather than programs, ``{"apprise": "<Apprise URL>"}`` entries (mail, Slack, Teams, …)
send a readable notification through Apprise, an optional dependency (``pip install
iotdefender[apprise]``). Apprise wraps the body in its own envelope and cannot reach a
self-hosted SNS, so it is a human channel only (stack-measurements §7).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: str


@dataclass(frozen=True)
class AppriseTarget:
    url: str


Subscription = Webhook | AppriseTarget


def load_subscriptions(path: Path | None) -> dict[str, list[Subscription]]:
    if path is None:
        return {}
    document = orjson.loads(path.read_bytes())
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected an object mapping topic ARNs to lists of subscriptions")
    result: dict[str, list[Subscription]] = {}
    for topic, entries in document.items():
        subscriptions: list[Subscription] = []
        for entry in entries:
            if isinstance(entry, dict) and "apprise" in entry:
                try:
                    import apprise  # noqa: F401
                except ImportError:
                    raise ValueError("apprise subscriptions need the optional dependency: "
                                     "pip install 'iotdefender[apprise]'") from None
                subscriptions.append(AppriseTarget(str(entry["apprise"])))
            elif isinstance(entry, dict) and "webhook" in entry and "secret" in entry:
                subscriptions.append(Webhook(str(entry["webhook"]), str(entry["secret"])))
            else:
                raise ValueError(f"{path}: each subscription of {topic} needs 'webhook' and 'secret', or 'apprise'")
        result[topic] = subscriptions
    return result
