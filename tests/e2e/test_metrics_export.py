"""Detect metrics export (alerts/metrics_export.py): a profile's ``metricsExportConfig`` and the
``exportMetric`` of its behaviors and retained metrics make the service publish the datapoints,
in AWS's metrics export schema, on the export topic of its broker. boto3 and paho only: a real
MQTT subscriber of the topic, a real device reporting and sending messages."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest


from tests.support.mqtt import Device, ExportSubscriber as Subscriber, report
from tests.support.processes import wait_for

WINDOW = 2.0  # the cloud-side window (--metrics-window): aws:num-messages-sent is exported at its end
SERVICE_ARGS = ["--report-min-interval", "0", "--metrics-window", str(WINDOW)]
ROLE = "arn:aws:iam::123456789012:role/export"


def exported(name: str, behaviors: list[dict[str, Any]], retained: list[dict[str, Any]] | None = None,
             **config: Any) -> dict[str, Any]:
    return dict(securityProfileName=name, behaviors=behaviors, additionalMetricsToRetainV2=retained or [],
                **config)


def test_exported_metrics_reach_the_topic_in_the_export_schema_and_nothing_else_does(service, iot):
    name = f"exp-{uuid.uuid4().hex[:8]}"
    thing, topic = f"{name}-device", f"export/{name}"
    group = iot.create_thing_group(thingGroupName=f"{name}-group")
    iot.create_thing(thingName=thing)
    iot.add_thing_to_thing_group(thingGroupName=f"{name}-group", thingName=thing)
    iot.create_security_profile(**exported(
        name,
        behaviors=[
            {"name": "ports", "metric": "aws:num-listening-tcp-ports", "exportMetric": True,
             "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}},
            {"name": "bytes", "metric": "aws:all-bytes-out",  # not exported
             "criteria": {"comparisonOperator": "less-than", "value": {"count": 100000}}},
            {"name": "sent", "metric": "aws:num-messages-sent", "exportMetric": True,
             "criteria": {"comparisonOperator": "less-than", "value": {"count": 100}, "durationSeconds": 300}},
        ],
        retained=[{"metric": "aws:listening-tcp-ports", "exportMetric": True},
                  {"metric": "aws:num-established-tcp-connections"}],  # retained, not exported
        metricsExportConfig={"mqttTopic": topic, "roleArn": ROLE}))
    # A second profile on the same device exporting the same count to the same topic: sent once.
    iot.create_security_profile(**exported(
        f"{name}-also", behaviors=[{"name": "ports", "metric": "aws:num-listening-tcp-ports", "exportMetric": True,
                                    "criteria": {"comparisonOperator": "less-than", "value": {"count": 9}}}],
        metricsExportConfig={"mqttTopic": topic, "roleArn": ROLE}))
    for profile in (name, f"{name}-also"):
        iot.attach_security_profile(securityProfileName=profile, securityProfileTargetArn=group["thingGroupArn"])
    consumer = Subscriber(service.mqtt_port, topic)
    device = Device(service.mqtt_port, thing)
    try:
        before = time.time()
        document = report(1, [22, 80], network_stats={"bytes_in": 10, "bytes_out": 20, "packets_in": 1, "packets_out": 2},
                          tcp_connections={"established_connections": {"connections": [], "total": 3}})
        assert device.report(document)[0] == "json/accepted"
        for n in range(3):
            device.client.publish(f"telemetry/{name}/{n}", b"x", qos=1).wait_for_publish(5)
        after = time.time()

        def names() -> list[str]:
            return sorted(m["name"] for m in consumer.received())

        wait_for(lambda: "aws:num-messages-sent" in names() and len(names()) >= 3, 20, "the exported metrics")
        time.sleep(2 * WINDOW)  # later windows: the idle device's 0s, and nothing else
        metrics = consumer.received()
        device_side = sorted((m for m in metrics if m["name"] != "aws:num-messages-sent"), key=lambda m: m["name"])
        assert device_side == [
            {"name": "aws:listening-tcp-ports", "thing": thing, "value": {"ports": [22, 80]}, "version": 1,
             "timestamp": device_side[0]["timestamp"]},
            {"name": "aws:num-listening-tcp-ports", "thing": thing, "value": {"count": 2}, "version": 1,
             "timestamp": device_side[0]["timestamp"]},
        ]
        # Device-side: the time the report was received, in milliseconds.
        assert before * 1000 - 1 <= device_side[0]["timestamp"] <= after * 1000 + 1
        sent = [m for m in metrics if m["name"] == "aws:num-messages-sent"]
        assert all(m["thing"] == thing and set(m["value"]) == {"count"} for m in sent)
        assert sum(m["value"]["count"] for m in sent) == 4, sent  # the report is a message sent too
        # Cloud-side: each at its window's end (milliseconds), as ListMetricValues has them.
        listed = iot.list_metric_values(thingName=thing, metricName="aws:num-messages-sent",
                                        startTime=before - 10, endTime=time.time() + 10)["metricDatumList"]
        stamps = sorted(m["timestamp"] for m in sent)
        assert sorted(t for d in listed if (t := round(d["timestamp"].timestamp() * 1000)) <= stamps[-1]) == stamps

        # Without its export configuration, the profile exports nothing any more.
        for profile in (name, f"{name}-also"):
            iot.update_security_profile(securityProfileName=profile, deleteMetricsExportConfig=True)
        assert device.report(report(2, [22]))[0] == "json/accepted"
        time.sleep(2 * WINDOW)
        assert sorted((m for m in consumer.received() if m["name"] != "aws:num-messages-sent"),
                      key=lambda m: m["name"]) == device_side
    finally:
        device.close()
        consumer.close()


def test_a_dimension_is_exported_with_its_name_and_operator(service, iot):
    name = f"dim-{uuid.uuid4().hex[:8]}"
    thing, topic = f"{name}-device", f"export/{name}"
    iot.create_dimension(name=f"{name}-filter", type="TOPIC_FILTER", stringValues=[f"sensors/{name}/#"])
    profile = iot.create_security_profile(**exported(
        name, behaviors=[{"name": "sensor-msgs", "metric": "aws:num-messages-sent", "exportMetric": True,
                          "metricDimension": {"dimensionName": f"{name}-filter", "operator": "IN"},
                          "criteria": {"comparisonOperator": "less-than", "value": {"count": 100},
                                       "durationSeconds": 300}}],
        metricsExportConfig={"mqttTopic": topic, "roleArn": ROLE}))
    iot.create_thing(thingName=thing)
    group = iot.create_thing_group(thingGroupName=f"{name}-group")
    iot.add_thing_to_thing_group(thingGroupName=f"{name}-group", thingName=thing)
    iot.attach_security_profile(securityProfileName=profile["securityProfileName"],
                                securityProfileTargetArn=group["thingGroupArn"])
    consumer = Subscriber(service.mqtt_port, topic)
    device = Device(service.mqtt_port, thing)
    try:
        for n in range(2):
            device.client.publish(f"sensors/{name}/{n}", b"x", qos=1).wait_for_publish(5)
        device.client.publish(f"other/{name}", b"x", qos=1).wait_for_publish(5)  # outside the filter
        wait_for(lambda: sum(m["value"]["count"] for m in consumer.received()) >= 2, 20, "the dimension's count")
        time.sleep(WINDOW)
        metrics = consumer.received()
        assert sum(m["value"]["count"] for m in metrics) == 2
        assert {json.dumps(m["dimension"], sort_keys=True) for m in metrics} == {
            json.dumps({"name": f"{name}-filter", "operator": "IN"}, sort_keys=True)}
    finally:
        device.close()
        consumer.close()


def test_export_asked_without_a_topic_is_stored_and_the_log_says_nothing_is_exported(service, iot):
    """exportMetric in a profile without metricsExportConfig: stored as given (AWS's pages do not
    say it is refused), and the operator is told in the log that nothing is exported."""
    name = f"notopic-{uuid.uuid4().hex[:8]}"
    behavior = {"name": "ports", "metric": "aws:num-listening-tcp-ports", "exportMetric": True,
                "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}}
    iot.create_security_profile(securityProfileName=name, behaviors=[behavior])
    assert iot.describe_security_profile(securityProfileName=name)["behaviors"] == [behavior]
    iot.create_security_profile(securityProfileName=f"{name}-retained", additionalMetricsToRetainV2=[
        {"metric": "aws:all-bytes-out", "exportMetric": True}])
    iot.update_security_profile(securityProfileName=name, metricsExportConfig={"mqttTopic": f"t/{name}", "roleArn": ROLE})
    iot.update_security_profile(securityProfileName=name, deleteMetricsExportConfig=True)
    lines = [line for line in service.log_path.read_text().splitlines()
             if "metrics_export_without_topic" in line and f'"profile": "{name}"' in line]
    assert len(lines) == 2 and '"ports"' in lines[0], lines
    retained = [line for line in service.log_path.read_text().splitlines()
                if "metrics_export_without_topic" in line and f"{name}-retained" in line]
    assert len(retained) == 1 and '"aws:all-bytes-out"' in retained[0], retained


def test_a_topic_no_message_can_be_published_to_is_refused(service, iot):
    name = f"bad-{uuid.uuid4().hex[:8]}"
    for topic in ("export/#", "export/+/x", "é" * 512, "$aws/things/victim/defender/metrics/json/accepted", "$SYS/x"):
        with pytest.raises(iot.exceptions.InvalidRequestException, match="mqttTopic"):
            iot.create_security_profile(securityProfileName=name,
                                        metricsExportConfig={"mqttTopic": topic, "roleArn": ROLE})
    iot.create_security_profile(securityProfileName=f"{name}-ingest",  # AWS IoT's Basic Ingest: allowed
                                metricsExportConfig={"mqttTopic": "$aws/rules/export_rule/dd", "roleArn": ROLE})
    iot.create_security_profile(securityProfileName=name, metricsExportConfig={"mqttTopic": "é" * 511, "roleArn": ROLE})
    with pytest.raises(iot.exceptions.InvalidRequestException, match="wildcard"):
        iot.update_security_profile(securityProfileName=name, metricsExportConfig={"mqttTopic": "a/#", "roleArn": ROLE})
    assert iot.describe_security_profile(securityProfileName=name)["metricsExportConfig"]["mqttTopic"] == "é" * 511
