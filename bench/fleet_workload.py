"""What the fleet runs against: 3 security profiles x 10 behaviors on all things, ~1.8 KB reports."""

from __future__ import annotations

import orjson

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"
PROFILES = 3
_REPORT_ID_MARK = 987654321012345


def behaviors(profile: int) -> list[dict]:
    """Ten behaviors over the device-side and custom metrics a report carries."""
    base = [
        ("tcp", "aws:listening-tcp-ports", {"comparisonOperator": "in-port-set",
                                            "value": {"ports": [22, 80, 443, 8883] + list(range(9000, 9010))}}),
        ("udp", "aws:listening-udp-ports", {"comparisonOperator": "not-in-port-set", "value": {"ports": [23, 69]}}),
        ("ntcp", "aws:num-listening-tcp-ports", {"comparisonOperator": "less-than", "value": {"count": 40}}),
        ("bytes", "aws:all-bytes-out", {"comparisonOperator": "less-than", "value": {"count": 10**9},
                                        "durationSeconds": 300}),
        ("pkts", "aws:all-packets-in", {"comparisonOperator": "less-than-equals", "value": {"count": 10**8}}),
        ("dest", "aws:destination-ip-addresses", {"comparisonOperator": "in-cidr-set",
                                                  "value": {"cidrs": ["10.0.0.0/8", "192.168.0.0/16"]}}),
        ("conns", "aws:num-established-tcp-connections", {"comparisonOperator": "less-than", "value": {"count": 100}}),
        ("cpu", "cpu", {"comparisonOperator": "less-than", "value": {"number": 95}}),
        ("temp", "temperature", {"comparisonOperator": "less-than", "value": {"number": 80 + profile},
                                 "consecutiveDatapointsToAlarm": 3}),
        ("fw", "firmware", {"comparisonOperator": "in-set", "value": {"strings": ["1.0.0", "1.0.1"]}}),
    ]
    return [{"name": f"{name}{profile}", "metric": metric, "criteria": criteria} for name, metric, criteria in base]


def configure(iot, export_topic: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """Custom metrics and the three profiles, attached to all things, through the AWS API. With
    ``export_topic``, every behavior is exported there (Detect metrics export, docs/alerts.md)."""
    iot.create_custom_metric(metricName="cpu", metricType="number")
    iot.create_custom_metric(metricName="temperature", metricType="number")
    iot.create_custom_metric(metricName="firmware", metricType="string-list")
    for p in range(PROFILES):
        if export_topic is None:
            iot.create_security_profile(securityProfileName=f"bench{p}", behaviors=behaviors(p))
        else:
            iot.create_security_profile(
                securityProfileName=f"bench{p}", behaviors=[{**b, "exportMetric": True} for b in behaviors(p)],
                metricsExportConfig={"mqttTopic": export_topic, "roleArn": "arn:aws:iam::123456789012:role/export"})
        iot.attach_security_profile(securityProfileName=f"bench{p}", securityProfileTargetArn=ALL_THINGS)


def report(report_id: int, device: int = 7) -> bytes:
    """A realistic ~1.8 KB report (10 TCP, 5 UDP ports, 12 connections, stats, 3 custom metrics)."""
    return orjson.dumps({
        "header": {"report_id": report_id, "version": "1.0"},
        "metrics": {
            "listening_tcp_ports": {"ports": [{"interface": "eth0", "port": p} for p in
                                              [22, 80, 443, 8883, 9000, 9001, 9002, 9003, 9004, 9005]], "total": 10},
            "listening_udp_ports": {"ports": [{"interface": "eth0", "port": p} for p in (53, 67, 123, 161, 5353)],
                                    "total": 5},
            "network_stats": {"bytes_in": 123456, "bytes_out": 654321, "packets_in": 1234, "packets_out": 4321},
            "tcp_connections": {"established_connections": {"connections": [
                {"local_interface": "eth0", "local_port": 40000 + i, "remote_addr": f"10.0.{i}.{device % 250}:443"}
                for i in range(12)], "total": 12}},
        },
        "custom_metrics": {"cpu": [{"number": 42.5}], "temperature": [{"number": 55.0}],
                           "firmware": [{"string_list": ["1.0.1"]}]},
    })


def report_template() -> tuple[bytes, bytes]:
    """A report split around its report id, so that load generators only splice a number in."""
    prefix, suffix = report(_REPORT_ID_MARK).split(str(_REPORT_ID_MARK).encode())
    return prefix, suffix
