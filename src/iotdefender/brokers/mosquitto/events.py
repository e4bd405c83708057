"""The plugin's event batches, decoded and applied to the cloud-side metrics and refusal counters.

A batch is NUL-separated fields; each record starts with its type (defender_plugin.c documents the
layouts). Decoding is one ``split`` per batch and a few dictionary updates per event, which keeps
more than 10,000 events/s a small share of the event loop.
"""

from __future__ import annotations

from typing import Protocol

import structlog

from iotdefender.brokers.mosquitto.connections import ConnectedClients
from iotdefender.brokers.mosquitto.handover import Handover
from iotdefender.brokers.observer import BrokerObserver
from iotdefender.log_limits import LimitedLog

log = structlog.get_logger("iotdefender.broker")
# A device reconnecting in a loop with a wrong password, or publishing where it may not, would
# otherwise write a line each time: a few per reason and interval, then a summary (log_limits.py).
AUTH_REFUSED_LOG = LimitedLog(log, "mqtt_auth_refused", "iotdefender_mqtt_denials_total")
PUBLISH_REFUSED_LOG = LimitedLog(log, "mqtt_publish_refused", "iotdefender_mqtt_denials_total")
PUBLISH_THROTTLED_LOG = LimitedLog(log, "mqtt_publish_throttled", "iotdefender_mqtt_publishes_throttled_total")

# Fields per record type, the type included ("T": the time of the records after it).
_SIZES = {"C": 5, "A": 4, "D": 2, "S": 4, "R": 3, "T": 2, "N": 2, "L": 3, "O": 3, "U": 3, "M": 3, "I": 3, "Q": 3,
          "B": 3, "P": 3}
# Reports the broker rejected itself, by record type: the code of its answer (none for a thing
# name over 128 bytes, which has no valid topic to answer on, as the service's InvalidThingName).
_ANSWERED = {"O": "Throttled", "U": "ServiceUnavailable", "I": "InvalidThingName", "B": "ServiceOverloaded"}


class DenialCounter(Protocol):
    def record_denial(self, client_id: str | None, reason: str, topic: str | None = None,
                      at: float | None = None) -> None: ...

    def record_throttled(self, client_id: str | None, count: int) -> None: ...

    def record_rejected_by_broker(self, thing: str, code: str, count: int) -> None: ...

    def record_subscriptions_refused(self, client_id: str, count: int) -> None: ...


class RepliesPublished(Protocol):
    def published(self, of: int, number: int) -> None: ...


def apply_events(payload: bytes, observer: BrokerObserver, denials: DenialCounter,
                 connections: ConnectedClients, handover: Handover | None = None,
                 replies: RepliesPublished | None = None) -> int:
    """Apply one batch; returns the number of events applied. A malformed tail is ignored.
    ``connections`` takes the plugin's count of connected clients (connections.py); ``handover``
    the batch's number (handover.py); ``replies`` the last reply message the plugin published
    (frames.py)."""
    fields = payload.decode("utf-8", "replace").split("\0")
    end = len(fields) - 1  # the batch ends with a NUL
    index = applied = 0
    at: float | None = None  # when the broker saw the records that follow (a "T" record: milliseconds)
    while index < end:
        kind = fields[index]
        size = _SIZES.get(kind)
        if size is None or index + size > end:
            break
        record = fields[index + 1:index + size]
        index += size
        if kind == "T":
            at = int(record[0]) / 1000 if record[0].isdigit() else None
            continue
        if kind == "N":  # not an event: how many clients are connected now
            if record[0].isdigit():
                connections.counted(int(record[0]))
            continue
        if kind == "Q":  # not an event: which batch this is
            if handover is not None and record[0].isdigit() and record[1].isdigit():
                handover.events(int(record[0]), int(record[1]))
            continue
        if kind == "P":  # not an event: the reply messages published
            if replies is not None and record[0].isdigit() and record[1].isdigit():
                replies.published(int(record[0]), int(record[1]))
            continue
        applied += 1
        if kind == "C":
            client, address, ok, reason = record
            if ok != "1":
                denials.record_denial(client, reason, at=at)  # a refused CONNECT has no topic
                AUTH_REFUSED_LOG(reason, client_id=client, address=address, reason=reason)
            observer.connect_attempt(client, address or None, ok == "1", at=at)
        elif kind == "A":
            denials.record_denial(record[0], record[2], record[1], at=at)
            if record[2] == "publish_denied":
                PUBLISH_REFUSED_LOG("publish_denied", client_id=record[0], topic=record[1])
        elif kind == "L":
            if record[1].isdigit():
                denials.record_throttled(record[0], int(record[1]))
                PUBLISH_THROTTLED_LOG("publish_throttled", client_id=record[0], dropped=int(record[1]))
        elif kind == "M":
            if record[1].isdigit():
                denials.record_subscriptions_refused(record[0], int(record[1]))
        elif kind in _ANSWERED:
            if record[1].isdigit():
                denials.record_rejected_by_broker(record[0], _ANSWERED[kind], int(record[1]))
        elif kind == "S":
            observer.message_sent(record[0], record[2], int(record[1]), at=at)
        elif kind == "R":
            observer.message_received(record[0], record[1], at=at)
        else:
            observer.disconnect(record[0], at=at)
    return applied
