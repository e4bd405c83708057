"""The alert message, shaped exactly like Device Defender's SNS notification (reference §6.1)."""

from __future__ import annotations

from typing import Any

import orjson

from iotdefender.engine.evaluator import ViolationEvent
from iotdefender.engine.ml_behavior import additional_info


def alert_message(event: ViolationEvent) -> bytes:
    """JSON with times in epoch milliseconds, as the SNS payload carries them."""
    document: dict[str, Any] = {
        "violationEventTime": int(round(event.at * 1000)),
        "thingName": event.thing_name,
        "behavior": event.behavior,
        "violationEventType": event.event_type.value,
        "violationId": event.violation_id,
        "securityProfileName": event.profile_name,
    }
    if event.metric_value is not None:
        document["metricValue"] = event.metric_value
    info = additional_info(event.behavior)
    if info is not None:  # as ListViolationEvents carries it (reference §6.1: presumed for ML alarms)
        document["violationEventAdditionalInfo"] = info
    return orjson.dumps(document)
