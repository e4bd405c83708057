"""The report between nodes in cluster mode, and the answer a detect node gives for it.

A broker node parses and accepts a device's report, then publishes one ``ReportMessage`` to the
thing's partition (cluster/report_stream.py); the partition's detect node decodes it, stores and
evaluates it, and answers each one with a ``ReportOutcome`` that the broker node turns into the
device's ``/accepted`` or ``/rejected`` (on the topic of the report's encoding, hence ``encoding``).

msgpack through msgspec: compact, typed (decoding is validation, as for the device's own report
in ingest/report.py), and several times faster than JSON for the datapoints' nested maps. The
``version`` field lets a later release change the message: a node refuses a version it does not
know instead of misreading it. Anything that does not decode into a current message raises
``UndecodableReport``; the detect node answers such a poison message ``InternalError`` and acks
it, so one bad message cannot wedge its partition (redelivered forever).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

import msgspec

VERSION = 1


class UndecodableReport(ValueError):
    """A message on the report stream that is not a report this release can read."""


class ReportMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One accepted device report, as a broker node hands it to the thing's detect node."""

    thing: str
    datapoints: dict[str, dict[str, Any]]  # series key -> MetricValue, as the parser produced them
    received_at: float  # epoch seconds at the broker node: the datapoints' time
    report_id: int
    encoding: Literal["json", "cbor"]  # the device's topic: its reply goes to the same encoding
    reply_to: str  # the broker node's reply subject (the node the device is connected to)
    version: int = VERSION


class _Envelope(msgspec.Struct):
    """Only the version, to say why a message of another release does not decode (a map without
    one is taken as this version's, and so as malformed)."""

    version: int = VERSION


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ReportMessage)
_envelope = msgspec.msgpack.Decoder(_Envelope)


def encode(message: ReportMessage) -> bytes:
    return _encoder.encode(message)


def decode(payload: bytes) -> ReportMessage:
    """The message in ``payload``; ``UndecodableReport`` if it is not a version-1 report."""
    try:
        message = _decoder.decode(payload)
    except msgspec.DecodeError as error:
        try:
            version = _envelope.decode(payload).version
        except msgspec.DecodeError:
            raise UndecodableReport(f"not a report message: {error}") from None
        if version != VERSION:
            raise UndecodableReport(f"report message version {version}, this node reads {VERSION}") from None
        raise UndecodableReport(f"malformed report message: {error}") from None
    if message.version != VERSION:
        raise UndecodableReport(f"report message version {message.version}, this node reads {VERSION}")
    return message


class Status(str, Enum):
    STORED = "stored"  # stored and evaluated by this handling: answer accepted
    DUPLICATE = "duplicate"  # a redelivery of a report a committed batch already covered: accepted
    REJECTED = "rejected"  # not stored: answer rejected with error_code / error_message


class ReportOutcome(msgspec.Struct, frozen=True):
    """What became of one delivery: everything the broker node needs for the device's reply.

    ``thing`` comes from the stream's header when the message itself could not be decoded; then
    ``report_id``, ``encoding`` and ``reply_to`` are unknown (None) and no device can be answered.
    """

    stream_sequence: int
    thing: str
    status: Status
    report_id: int | None = None
    encoding: str | None = None
    reply_to: str | None = None
    error_code: str | None = None  # an ingest RejectCode value
    error_message: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status is not Status.REJECTED
