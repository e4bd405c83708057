"""Alerts to an SNS-compatible endpoint (moto's server): the topic receives AWS's message."""

from __future__ import annotations

import json
import time

from tests.support.mqtt import Device, report
from tests.support.processes import MotoServer, ServiceProcess


def fleet_profile(svc: ServiceProcess, topic: str):  # type: ignore[no-untyped-def]
    """Profile "fleet" on all things, allowing port 443 only, alerting to ``topic``."""
    iot = svc.client()
    iot.create_security_profile(securityProfileName="fleet", behaviors=[
        {"name": "ports", "metric": "aws:listening-tcp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]}}}],
        alertTargets={"SNS": {"alertTargetArn": topic, "roleArn": "arn:aws:iam::123456789012:role/dd"}})
    iot.attach_security_profile(securityProfileName="fleet",
                                securityProfileTargetArn="arn:aws:iot:us-east-1:123456789012:all/things")
    return iot


def test_alert_is_published_to_the_profiles_sns_topic(tmp_path):
    sns_server = MotoServer()
    sns_server.start()
    try:
        sns, sqs = sns_server.client("sns"), sns_server.client("sqs")
        topic = sns.create_topic(Name="dd-alerts")["TopicArn"]
        queue_url = sqs.create_queue(QueueName="alerts")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})

        svc = ServiceProcess(data_dir=tmp_path, extra_args=["--report-min-interval", "0",
                                                            "--sns-endpoint-url", sns_server.endpoint])
        svc.env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        svc.start()
        try:
            fleet_profile(svc, topic)
            dev = Device(svc.mqtt_port, "cam-9")
            assert dev.report(report(1, [22, 443]))[0] == "json/accepted"
            dev.close()
            deadline, messages = time.time() + 20, []
            while time.time() < deadline and not messages:
                messages = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get("Messages", [])
            assert messages, "no alert reached the SNS topic"
            alert = json.loads(messages[0]["Body"])
            assert alert["violationEventType"] == "in-alarm" and alert["thingName"] == "cam-9"
            assert alert["securityProfileName"] == "fleet" and alert["metricValue"] == {"ports": [22, 443]}
            assert alert["behavior"]["name"] == "ports" and isinstance(alert["violationEventTime"], int)
        finally:
            svc.stop()
    finally:
        sns_server.stop()


def test_apprise_subscription_notifies_people(tmp_path):
    """An Apprise URL (here json://, Apprise's generic JSON POST) gets a readable notification."""
    from tests.support.webhook import WebhookReceiver

    receiver = WebhookReceiver("unused")
    topic = "arn:aws:sns:us-east-1:123456789012:humans"
    subscriptions = tmp_path / "subs.json"
    subscriptions.write_text(json.dumps({topic: [{"apprise": f"json://127.0.0.1:{receiver.port}/notify"}]}))
    svc = ServiceProcess(data_dir=tmp_path / "data", extra_args=["--report-min-interval", "0",
                                                                 "--alert-subscriptions", str(subscriptions)])
    svc.start()
    try:
        fleet_profile(svc, topic)
        dev = Device(svc.mqtt_port, "cam-10")
        assert dev.report(report(1, [22]))[0] == "json/accepted"
        dev.close()
        envelope = receiver.next(timeout=20)["message"]
        assert "in-alarm" in envelope["title"] and "cam-10" in envelope["title"]
        assert json.loads(envelope["message"])["thingName"] == "cam-10"
    finally:
        svc.stop()
        receiver.close()
