"""The ``/accepted`` and ``/rejected`` replies, in the encoding of the report (reference §4.4)."""

from __future__ import annotations

from typing import Any

import cbor2
import orjson


def reply_topic(thing_name: str, encoding: str, accepted: bool) -> str:
    return f"$aws/things/{thing_name}/defender/metrics/{encoding}/{'accepted' if accepted else 'rejected'}"


#: The longest ErrorMessage a reply carries. A message may quote what the device sent (an unknown
#: custom metric's name): a report naming one of 120,000 characters was answered with a 120 KB reply,
#: and a few of those in one batch of replies passed the broker's packet limit, which closed the
#: service's own connection (every device's answers lost meanwhile; an outside-in test).
MAX_ERROR_MESSAGE_CHARS = 1024


def bounded(message: str) -> str:
    """``message`` cut to ``MAX_ERROR_MESSAGE_CHARS`` (its log line too: 120 KB lines otherwise)."""
    return message if len(message) <= MAX_ERROR_MESSAGE_CHARS else message[:MAX_ERROR_MESSAGE_CHARS - 1] + "…"


def reply_payload(thing_name: str, encoding: str, report_id: int | None, now_ms: int,
                  error: tuple[str, str] | None = None) -> bytes:
    """``{thingName, reportId, status, [statusDetails{ErrorCode, ErrorMessage}], timestamp(ms)}``."""
    document: dict[str, Any] = {"thingName": thing_name}
    # Echo the id only if a 64-bit integer holds it: a rejected report may carry any integer,
    # and orjson refuses wider ones (the reply to such a report failed and killed the session).
    if report_id is not None and -(2**63) <= report_id < 2**64:
        document["reportId"] = report_id
    document["status"] = "ACCEPTED" if error is None else "REJECTED"
    if error is not None:
        document["statusDetails"] = {"ErrorCode": error[0], "ErrorMessage": bounded(error[1])}
    document["timestamp"] = now_ms
    return orjson.dumps(document) if encoding == "json" else cbor2.dumps(document)
