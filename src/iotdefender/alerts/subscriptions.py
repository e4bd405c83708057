"""Local subscriptions of SNS topic ARNs, for sites without an SNS service.

A JSON file given with ``--alert-subscriptions`` maps a topic ARN (the ``alertTargetArn`` of a
profile's ``alertTargets.SNS``) to webhooks::

    {"arn:aws:sns:us-east-1:123456789012:dd-alerts": [
        {"webhook": "https://ops.example/hooks/dd", "secret": "shared-hmac-secret"}
    ]}

Each POST carries ``X-Iotdefender-Signature: sha256=<hex HMAC-SHA256 of timestamp + "." + body>``
and ``X-Iotdefender-Timestamp`` so receivers can verify origin and freshness.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: str


def load_subscriptions(path: Path | None) -> dict[str, list[Webhook]]:
    if path is None:
        return {}
    document = orjson.loads(path.read_bytes())
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected an object mapping topic ARNs to lists of subscriptions")
    result: dict[str, list[Webhook]] = {}
    for topic, entries in document.items():
        hooks = []
        for entry in entries:
            if not isinstance(entry, dict) or "webhook" not in entry or "secret" not in entry:
                raise ValueError(f"{path}: each subscription of {topic} needs 'webhook' and 'secret'")
            hooks.append(Webhook(str(entry["webhook"]), str(entry["secret"])))
        result[topic] = hooks
    return result
