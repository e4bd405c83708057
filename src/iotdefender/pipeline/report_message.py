"""The report between nodes in cluster mode, and the answer a detect node gives for it.

A broker node parses and accepts a device's report, then publishes one ``ReportMessage`` to the
thing's partition (cluster/report_stream.py); the partition's detect node decodes it, stores and
evaluates it, and answers each one with a ``ReportOutcome`` that the broker node turns into the
device's ``/accepted`` or ``/rejected`` (on the topic of the report's encoding, hence ``encoding``).

msgpack through msgspec: compact, typed (decoding is validation, as for the device's own report
in ingest/report.py), and several times faster than JSON for the datapoints' nested maps. The
``version`` field lets a later release change the message: a node refuses a version it does not
read instead of misreading it. Anything that does not decode into a message of a version this
release reads raises ``UndecodableReport``; the detect node answers such a poison message
``InternalError`` and acks it, so one bad message cannot wedge its partition (redelivered forever).

**Versions in a rolling upgrade.** Nodes of two releases share the stream while the cluster is
upgraded node by node, so a broker node must not write a version that a live detect node does not
read. Each release reads ``READS`` (its own version and the previous one, once there is one) and
announces them in the ``iotdefender-nodes`` bucket (cluster/shared_settings.py); a broker node
writes ``writable_version`` of what the live nodes announce: the highest version it can write that
every one of them reads. A release that changes the message therefore writes the previous version
until the last node of the previous release has left, and its own after that. Releases before the
announcement (up to 209be04) announce nothing and read exactly version 1.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from enum import Enum
from typing import Any, Literal

import msgspec

#: The version this release writes once every live node reads it.
VERSION = 1
#: The versions this release reads (and can write): its own and, when it changes the message, the
#: previous release's, so that a cluster of both releases keeps working in either direction.
READS: frozenset[int] = frozenset({1})
#: What a node reads that announces nothing (a release before the announcement).
UNANNOUNCED_READS: frozenset[int] = frozenset({1})


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


#: The key under which a node announces the versions it reads (cluster/shared_settings.py; absent:
#: a release before the announcement, which reads ``UNANNOUNCED_READS``).
READS_ANNOUNCEMENT = "report-message-reads"


def announcement() -> dict[str, list[int]]:
    """What this release announces to the other nodes about report messages."""
    return {READS_ANNOUNCEMENT: sorted(READS)}


def version_to_write(announced: Iterable[object], writes: Collection[int] = READS) -> int:
    """``writable_version`` over the live nodes' announcements as read (anything but a list of
    versions: announced nothing)."""
    return writable_version([reads if isinstance(reads, list) else None for reads in announced], writes)


def writable_version(announced: Iterable[Collection[int] | None], writes: Collection[int] = READS) -> int:
    """The version to write: the highest of ``writes`` that every live node reads, by what each one
    ``announced`` (None: it announced nothing, an older release: ``UNANNOUNCED_READS``). If they
    share none (a node two releases apart, which the procedure rules out), this release's own."""
    common = set(writes)
    for reads in announced:
        common &= set(UNANNOUNCED_READS if reads is None else reads)
    return max(common) if common else VERSION


def encode(message: ReportMessage, version: int | None = None) -> bytes:
    """``message`` as version ``version`` (one of ``READS``, which ``writable_version`` picks), or
    as the version it carries."""
    if version is None or version == message.version:
        return _encoder.encode(message)
    if version not in READS:
        raise ValueError(f"report message version {version}: this release writes {_reads(READS)}")
    return _encoder.encode(msgspec.structs.replace(message, version=version))


def _reads(reads: Collection[int]) -> str:
    return ", ".join(str(v) for v in sorted(reads))


def decode(payload: bytes, reads: Collection[int] = READS) -> ReportMessage:
    """The message in ``payload``; ``UndecodableReport`` if it is not a report of a version in ``reads``."""
    try:
        message = _decoder.decode(payload)
    except msgspec.DecodeError as error:
        try:
            version = _envelope.decode(payload).version
        except msgspec.DecodeError:
            raise UndecodableReport(f"not a report message: {error}") from None
        if version not in reads:
            raise UndecodableReport(f"report message version {version}, this node reads {_reads(reads)}") from None
        raise UndecodableReport(f"malformed report message: {error}") from None
    if message.version not in reads:
        raise UndecodableReport(f"report message version {message.version}, this node reads {_reads(reads)}")
    return message


class Status(str, Enum):
    STORED = "stored"  # stored and evaluated by this handling: answer accepted
    DUPLICATE = "duplicate"  # a redelivery of a report a committed batch already covered: accepted
    REJECTED = "rejected"  # not stored: answer rejected with error_code / error_message


class ReportOutcome(msgspec.Struct, frozen=True):
    """What became of one delivery: everything the broker node needs for the device's reply.

    ``thing`` comes from the stream's header when the message itself could not be decoded; then
    ``report_id`` and ``reply_to`` come from the headers too (None from a broker node of a release
    before them: no device can be answered), and ``encoding`` is unknown (None).
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
