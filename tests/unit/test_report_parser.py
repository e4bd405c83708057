"""The report parser against random and mutated input: every input gets a verdict, none crashes."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdefender.ingest.replies import reply_payload
from iotdefender.ingest.report import ParsedReport, RejectCode, ReportRejected, check_thing_name, parse_report

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
    try:
        return parse_report(payload, encoding, TYPES)
    except ReportRejected as rejection:
        assert isinstance(rejection.code, RejectCode) and rejection.message
        return rejection


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
                                      ("", False), ("bad\x01name", False), (b"\xff\xfe", False)])
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
