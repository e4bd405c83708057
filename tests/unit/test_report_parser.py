"""The report parser against random and mutated input: every input gets a verdict, none crashes."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdefender.ingest.replies import reply_payload
from iotdefender.ingest.report import (
    ParsedReport,
    RejectCode,
    ReportRejected,
    check_thing_name,
    parse_report,
    report_id_hint,
)

TYPES = {"n": "number", "nl": "number-list", "sl": "string-list", "ip": "ip-address-list"}
VALID = {"header": {"report_id": 1530304554, "version": "1.0"},
         "metrics": {"listening_tcp_ports": {"ports": [{"interface": "eth0", "port": 22}], "total": 1},
                     "listening_udp_ports": {"ports": [], "total": 0},
                     "network_stats": {"bytes_in": 1, "bytes_out": 2, "packets_in": 3, "packets_out": 4},
                     "tcp_connections": {"established_connections": {
                         "connections": [{"remote_addr": "[2001:db8::1]:443", "local_port": 1}], "total": 1}}},
         "custom_metrics": {"n": [{"number": 1}], "nl": [{"number_list": [1, 2]}], "sl": [{"string_list": ["a"]}],
                            "ip": [{"ip_list": ["10.0.0.1"]}]}}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


def verdict(payload: bytes, encoding: str) -> ParsedReport | ReportRejected:
    """A parsed report or a rejection whose reply can be built, as the service builds it."""
    try:
        return parse_report(payload, encoding, TYPES)
    except ReportRejected as rejection:
        assert isinstance(rejection.code, RejectCode) and rejection.message
        report_id = rejection.report_id if rejection.report_id is not None else report_id_hint(payload, encoding)
        assert reply_payload("t", encoding, report_id, 0, (rejection.code.value, rejection.message))
        return rejection


def encode(document, encoding: str) -> bytes:
    return json.dumps(document).encode() if encoding == "json" else cbor2.dumps(document)


def with_bytes_in(value: int) -> dict:
    return {"header": {"report_id": 1, "version": "1.0"},
            "metrics": {"network_stats": {"bytes_in": value, "bytes_out": 1, "packets_in": 1, "packets_out": 1}}}


@pytest.mark.parametrize("encoding", ["json", "cbor"])
@pytest.mark.parametrize("value, ok", [(10**30, False), (2**63, False), (-1, False), (2**63 - 1, True), (0, True)])
def test_counts_are_aws_longs(value, ok, encoding):
    """MetricValue.count is a long >= 0; a wider count failed the store's whole batch (issue #11)."""
    result = verdict(encode(with_bytes_in(value), encoding), encoding)
    if ok:
        assert isinstance(result, ParsedReport) and result.datapoints["aws:all-bytes-in"] == {"count": value}
    else:
        assert isinstance(result, ReportRejected) and result.code is RejectCode.INVALID_PAYLOAD
        assert "bytes_in" in result.message and result.report_id == 1


DEEP = 20_000


@pytest.mark.parametrize("payload, encoding, says", [
    (b'{"header":{"report_id":1,"version":"1.0"},"metrics":{"listening_tcp_ports":{"ports":'
     b'[{"port":22,"interface":"' + bytes([0xFF, 0xFE]) + b'"}]}}}', "json", "UTF-8"),
    (b'{"header":{"report_id":1,"version":"1.0"},"metrics":{},"custom_metrics":{"n":'
     + b"[" * DEEP + b"]" * DEEP + b"}}", "json", "nested"),
    (b'{"header":{"report_id":1,"version":"1.0"},"metrics":{},"x":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
     "json", "nested"),
    (b"\xa2" + cbor2.dumps("header") + cbor2.dumps({"report_id": 1, "version": "1.0"}) + cbor2.dumps("metrics")
     + b"\x81" * DEEP + b"\x80", "cbor", ""),
])
def test_hostile_payloads_are_malformed_reports(payload, encoding, says):
    """Each of these crashed the MQTT session (UnicodeDecodeError, RecursionError) before."""
    result = verdict(payload, encoding)
    assert isinstance(result, ReportRejected) and result.code is RejectCode.INVALID_PAYLOAD
    assert says in result.message


@pytest.mark.parametrize("report_id", [2**64, 2**70, -(2**64)])
def test_a_report_id_past_64_bits_is_rejected_and_the_reply_still_built(report_id):
    for encoding in ("json", "cbor"):
        document = {"header": {"report_id": report_id, "version": "1.0"}, "metrics": {}}
        result = verdict(encode(document, encoding), encoding)
        assert isinstance(result, ReportRejected) and result.code is RejectCode.INVALID_PAYLOAD
        body = json.loads(reply_payload("t", "json", report_id, 0, (result.code.value, result.message)))
        assert "reportId" not in body and body["status"] == "REJECTED"


def test_the_documented_report_is_valid_in_every_form():
    for payload, encoding in ((json.dumps(VALID).encode(), "json"), (cbor2.dumps(VALID), "cbor")):
        parsed = parse_report(payload, encoding, TYPES)
        assert parsed.report_id == 1530304554
        assert parsed.datapoints["aws:destination-ip-addresses"] == {"cidrs": ["2001:db8::1"]}
        assert parsed.datapoints["aws:listening-udp-ports"] == {"ports": []}


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["json", "cbor"]))
def test_random_bytes_always_get_a_verdict(payload, encoding):
    verdict(payload, encoding)


@settings(max_examples=400, deadline=None)
@given(json_values, st.sampled_from(["json", "cbor"]))
def test_random_documents_always_get_a_verdict(document, encoding):
    payload = json.dumps(document).encode() if encoding == "json" else cbor2.dumps(document)
    verdict(payload, encoding)


def _paths(document, prefix=()):
    if isinstance(document, dict):
        for key, value in document.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield prefix + (index,)
            yield from _paths(value, prefix + (index,))


PATHS = list(_paths(VALID))


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(PATHS), json_values, st.booleans(), st.sampled_from(["json", "cbor"]))
def test_mutated_valid_reports_always_get_a_verdict(path, replacement, delete, encoding):
    document = json.loads(json.dumps(VALID))
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    payload = json.dumps(document).encode() if encoding == "json" else cbor2.dumps(document)
    result = verdict(payload, encoding)
    if isinstance(result, ReportRejected):
        # Whatever the reason, the reply to the device can always be built.
        assert reply_payload("t", encoding, result.report_id, 0, (result.code.value, result.message))


@pytest.mark.parametrize("name, ok", [("dev-1", True), ("x" * 128, True), ("é" * 64, True), ("é" * 65, False),
                                      ("", False), ("bad\x01name", False), (b"\xff\xfe", False),
                                      ("del\x7f", False), ("c1\x85", False), ("c1\x9f", False), ("\x1f", False),
                                      ("nbsp\xa0", True), ("tilde~", True)])
def test_thing_names(name, ok):
    if ok:
        assert check_thing_name(name) == name
    else:
        with pytest.raises(ReportRejected) as exc:
            check_thing_name(name)
        assert exc.value.code is RejectCode.INVALID_THING_NAME


def test_a_type_error_before_invalid_json_is_still_a_verdict():
    """The typed decode stops at the wrong type first; the second decode meets the bad JSON."""
    document = json.loads(json.dumps(VALID))
    document["custom_metrics"]["n"] = [[float("inf")]]
    result = verdict(json.dumps(document).encode(), "json")  # Python writes Infinity: not JSON
    assert isinstance(result, ReportRejected) and result.code is RejectCode.INVALID_PAYLOAD
    assert "not valid JSON" in result.message


# -- adversarial structures (issue #11): what the random documents above never reach ------------
def _value_at(document, path):
    for step in path:
        document = document[step]
    return document


NUMBER_PATHS = [p for p in PATHS if isinstance(_value_at(VALID, p), (int, float)) and not isinstance(
    _value_at(VALID, p), bool)]


def _nested(depth: int, opener: str, encoding: str) -> bytes:
    """A report with ``depth`` nested arrays or maps where a metric block belongs."""
    if encoding == "json":
        inner = ("[" * depth + "]" * depth) if opener == "list" else ('{"a":' * depth + "0" + "}" * depth)
        return ('{"header":{"report_id":7,"version":"1.0"},"metrics":' + inner + "}").encode()
    head = cbor2.dumps("header") + cbor2.dumps({"report_id": 7, "version": "1.0"}) + cbor2.dumps("metrics")
    inner = (b"\x81" * depth + b"\x80") if opener == "list" else ((b"\xa1" + cbor2.dumps("a")) * depth + b"\x00")
    return b"\xa2" + head + inner


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40_000), st.sampled_from(["list", "map"]), st.sampled_from(["json", "cbor"]))
def test_any_nesting_depth_gets_a_verdict(depth, opener, encoding):
    verdict(_nested(depth, opener, encoding), encoding)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(NUMBER_PATHS), st.integers(-(2**200), 2**200) | st.integers(2**63 - 3, 2**64 + 3),
       st.sampled_from(["json", "cbor"]))
def test_any_integer_at_any_number_gets_a_verdict(path, number, encoding):
    document = json.loads(json.dumps(VALID))
    parent = _value_at(document, path[:-1])
    parent[path[-1]] = number
    result = verdict(encode(document, encoding), encoding)
    if isinstance(result, ParsedReport):  # nothing accepted is wider than what the store holds
        for value in result.datapoints.values():
            assert all(-(2**63) <= v < 2**63 for v in value.get("ports", []) + [value.get("count", 0)])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=4))
def test_bytes_spliced_into_a_valid_json_report_get_a_verdict(position, junk):
    """Invalid UTF-8 inside strings, NUL bytes, broken escapes, cut tokens."""
    payload = json.dumps(VALID).encode()
    position %= len(payload)
    verdict(payload[:position] + junk + payload[position:], "json")


@pytest.mark.parametrize("tags", [1, 2])
def test_a_self_described_cbor_report_is_the_report_it_wraps(tags):
    """RFC 8949 section 3.4.6: tag 55799 only says "this is CBOR"; it was rejected as "must be a map"."""
    document = VALID
    for _ in range(tags):
        document = cbor2.CBORTag(55799, document)
    payload = cbor2.dumps(document)
    assert payload.startswith(b"\xd9\xd9\xf7")
    parsed = parse_report(payload, "cbor", TYPES)
    assert parsed.report_id == 1530304554
    assert parsed.datapoints == parse_report(cbor2.dumps(VALID), "cbor", TYPES).datapoints
    assert report_id_hint(cbor2.dumps(cbor2.CBORTag(55799, {"header": {"report_id": 7}})), "cbor") == 7


def _shared_strings(document: dict) -> dict:
    """The string-list's first string marked shareable (tag 28), the others references to it (tag 29)."""
    first, *others = document["custom_metrics"]["sl"][0]["string_list"]
    shared = [cbor2.CBORTag(28, first)] + [cbor2.CBORTag(29, 0)] * len(others)
    return {**document, "custom_metrics": {"sl": [{"string_list": shared}]}}


@pytest.mark.parametrize("encoder", [
    pytest.param(lambda document: cbor2.dumps(_shared_strings(document)), id="shared values (tags 28, 29)"),
    pytest.param(lambda document: cbor2.dumps(document, string_referencing=True), id="string references (tags 256, 25)"),
])
def test_a_cbor_report_with_references_is_refused_not_expanded(encoder):
    """One 4 KB string and 999 references to it was a 4 MB string-list once decoded (with a 120 KB
    string, 120 million characters stored from a 123 KB report: found by an outside-in test)."""
    long = "x" * 4096
    document = {"header": {"report_id": 9, "version": "1.0"}, "metrics": {},
                "custom_metrics": {"sl": [{"string_list": [long] * 1000}]}}
    payload = encoder(document)
    assert len(payload) < 8 * 1024, len(payload)  # the references are really there
    with pytest.raises(ReportRejected) as refused:
        parse_report(payload, "cbor", TYPES)
    assert refused.value.code == RejectCode.INVALID_PAYLOAD and "is not accepted in a report" in refused.value.message
    assert refused.value.report_id is None or refused.value.report_id == 9
    assert parse_report(cbor2.dumps({**document, "custom_metrics": {"sl": [{"string_list": ["a", "a"]}]}}),
                        "cbor", TYPES).report_id == 9  # the same values written out are a report
