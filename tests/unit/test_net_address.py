"""Endpoints as reports and broker events give them: out-of-range ports are refused, not dropped."""

from __future__ import annotations

import json
import re

import pytest

from iotdefender.ingest.report import ReportRejected, parse_report
from iotdefender.net_address import ip_of_endpoint


@pytest.mark.parametrize("text, ip", [("10.0.0.1:443", "10.0.0.1"), ("[2001:db8::1]:443", "2001:db8::1"),
                                      ("2001:db8::1", "2001:db8::1"), ("10.0.0.1", "10.0.0.1"),
                                      ("10.0.0.1:65535", "10.0.0.1"), ("10.0.0.1:0", "10.0.0.1")])
def test_accepted_endpoints(text, ip):
    assert ip_of_endpoint(text) == ip


@pytest.mark.parametrize("text, reason", [("10.0.0.1:999999", "out of range 0-65535"),
                                          ("10.0.0.1:65536", "out of range 0-65535"),
                                          ("[::1]:70000", "out of range 0-65535"), ("10.0.0.1:", "not a number"),
                                          ("10.0.0.1:-1", "not a number"), ("10.0.0.1:٣", "not a number"),
                                          ("[::1", "is not [IPv6]:port"), ("garbage", "not an IP address"),
                                          ("300.0.0.1:80", "does not appear")])
def test_refused_endpoints(text, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        ip_of_endpoint(text)


def test_report_with_out_of_range_remote_port_is_rejected_with_the_reason():
    report = {"header": {"report_id": 1, "version": "1.0"},
              "metrics": {"tcp_connections": {"established_connections": {
                  "connections": [{"remote_addr": "192.0.2.1:999999", "local_port": 1}], "total": 1}}}}
    with pytest.raises(ReportRejected, match="out of range 0-65535"):
        parse_report(json.dumps(report).encode(), "json", {})
