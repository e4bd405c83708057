"""The report message between a broker node and a detect node: round trip, and refusals that say why."""

from __future__ import annotations

import msgspec
import pytest

from iotdefender.pipeline.report_message import ReportMessage, UndecodableReport, decode, encode

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
