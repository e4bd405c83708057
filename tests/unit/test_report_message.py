"""The report message between a broker node and a detect node: round trip, and refusals that say why."""

from __future__ import annotations

import msgspec
import pytest

from iotdefender.pipeline.report_message import (
    READS,
    VERSION,
    ReportMessage,
    UndecodableReport,
    decode,
    encode,
    writable_version,
)

MESSAGE = ReportMessage("dev-1", {"aws:num-listening-tcp-ports": {"count": 3},
                                  "aws:listening-tcp-ports": {"ports": [22, 443]}},
                        1764446400.25, 2**62, "cbor", "iotdefender.replies.broker-1")


def test_a_message_round_trips_with_its_version():
    assert decode(encode(MESSAGE)) == MESSAGE
    assert decode(encode(MESSAGE)).version == 1


@pytest.mark.parametrize("payload, reason", [
    (b"", "not a report message"),
    (b"\xc1", "not a report message"),  # a byte msgpack never uses
    (msgspec.msgpack.encode([1, 2, 3]), "not a report message"),
    (msgspec.msgpack.encode({"thing": "dev-1"}), "malformed report message"),  # fields missing
    (msgspec.msgpack.encode({**msgspec.structs.asdict(MESSAGE), "encoding": "xml"}), "malformed report message"),
    (msgspec.msgpack.encode({**msgspec.structs.asdict(MESSAGE), "report_id": "7"}), "malformed report message"),
    (msgspec.msgpack.encode({"version": 2, "thing": "dev-1", "payload": b"..."}), "version 2, this node reads 1"),
    (encode(ReportMessage("dev-1", {}, 1.0, 1, "json", "r", version=3)), "version 3, this node reads 1"),
])
def test_anything_else_is_refused_with_a_reason(payload: bytes, reason: str):
    with pytest.raises(UndecodableReport, match=reason):
        decode(payload)


def test_a_node_reads_every_version_it_announces():
    """A release that changes the message reads the previous version too (``reads``): a message of
    either decodes; one of a version it does not read is refused, naming what it reads."""
    newer = encode(ReportMessage("dev-1", {}, 1.0, 1, "json", "r", version=2))
    assert decode(newer, reads={1, 2}).version == 2
    assert decode(encode(MESSAGE), reads={1, 2}) == MESSAGE
    with pytest.raises(UndecodableReport, match="version 2, this node reads 1$"):
        decode(newer)


def test_a_broker_node_writes_the_highest_version_every_live_node_reads():
    # This release and a next one that reads 1 and 2: 1 while a node of this release lives, then 2.
    assert writable_version([[1], [1, 2]], writes={1, 2}) == 1
    assert writable_version([[1, 2], [1, 2]], writes={1, 2}) == 2
    # A node of a release before the announcements (an entry without it) reads only version 1.
    assert writable_version([None, [1, 2]], writes={1, 2}) == 1
    assert writable_version([], writes={1, 2}) == 2  # alone
    assert writable_version([[3]], writes={1, 2}) == VERSION  # nothing in common: its own, the node says so
    # This release: version 1, whatever the others announce.
    assert writable_version([None, [1], [1, 2]]) == 1
    assert READS == {VERSION}


def test_a_message_is_written_in_the_version_chosen():
    assert decode(encode(MESSAGE, version=1)).version == 1
    with pytest.raises(ValueError, match="this release writes 1"):
        encode(MESSAGE, version=2)
