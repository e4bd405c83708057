"""The builder's endpoints over HTTP: catalog, validation through the API's rules, preview.

Bad input (not JSON, not a list, an unknown profile, invalid behaviors) is answered with the
API's error names and statuses, never a 500; writes need the CSRF token like every console POST;
the preview counts a real device's retained reports.
"""

from __future__ import annotations

import time

import httpx

from tests.e2e.test_console_http import logged_in
from tests.support.mqtt import Device, report

SERVICE_ARGS = ["--report-min-interval", "0", "--time-scale", "100"]
FEW_PORTS = {"name": "few-ports", "metric": "aws:num-listening-tcp-ports",
             "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 2}}}


def test_catalog_offers_every_metric_with_its_rules(service):
    client, _ = logged_in(service)
    service.client().create_custom_metric(metricName="builder-cpu", metricType="number", displayName="CPU load",
                                          clientRequestToken="b1")
    catalog = client.get("/console/api/builder/catalog").json()
    by_name = {m["name"]: m for m in catalog["metrics"]}
    assert by_name["aws:all-bytes-out"] == {
        "name": "aws:all-bytes-out", "label": "aws:all-bytes-out", "side": "device", "unit": "bytes",
        "unitWords": {"one": "byte", "other": "bytes"}, "valueType": "count", "operators": ["greater-than", "greater-than-equals", "less-than", "less-than-equals"],
        "duration": True, "statistical": True, "ml": True, "dimension": False}
    assert by_name["aws:listening-tcp-ports"]["operators"] == ["in-port-set", "not-in-port-set"]
    assert by_name["aws:disconnect-duration"]["unitWords"] == {"one": "minute", "other": "minutes"}
    assert by_name["builder-cpu"]["unitWords"] is None
    assert by_name["builder-cpu"]["label"] == "CPU load" and by_name["builder-cpu"]["valueType"] == "number"
    assert catalog["mlDetect"] is True  # ML Detect is evaluated: the builder offers it
    assert len([m for m in catalog["metrics"] if m["side"] != "custom"]) == 18
    anonymous = httpx.Client(base_url=service.endpoint, timeout=30)
    assert anonymous.get("/console/api/builder/catalog").status_code == 401


def test_validation_is_the_apis(service):
    client, token = logged_in(service)
    headers = {"x-csrf-token": token}
    ok = client.post("/console/api/builder/validate", json={"behaviors": [FEW_PORTS]}, headers=headers)
    assert ok.status_code == 200 and ok.json() == {"valid": True, "validationErrors": []}
    wrong = dict(FEW_PORTS, criteria={"comparisonOperator": "in-port-set", "value": {"count": 2}})
    verdict = client.post("/console/api/builder/validate", json={"behaviors": [wrong]}, headers=headers).json()
    assert verdict["valid"] is False
    assert "Behavior few-ports is malformed" in verdict["validationErrors"][0]["errorMessage"]
    expected = service.client().validate_security_profile_behaviors(behaviors=[wrong])
    assert [e["errorMessage"] for e in verdict["validationErrors"]] == [
        e["errorMessage"] for e in expected["validationErrors"]]
    for body in ({"behaviors": "nope"}, {}, [1, 2]):
        answer = client.post("/console/api/builder/validate", json=body, headers=headers)
        assert answer.status_code == 200 and answer.json()["valid"] is False, body
        assert answer.json()["validationErrors"][0]["errorMessage"].startswith("InvalidRequestException")
    assert client.post("/console/api/builder/validate", content=b"{", headers=headers).json()["valid"] is False
    assert client.post("/console/api/builder/validate", json={"behaviors": [FEW_PORTS]}).status_code == 403


def test_preview_answers_counts_or_aws_errors(service):
    client, token = logged_in(service)
    headers = {"x-csrf-token": token}
    iot = service.client()
    iot.create_security_profile(securityProfileName="builder-preview", behaviors=[FEW_PORTS])
    iot.attach_security_profile(securityProfileName="builder-preview",
                                securityProfileTargetArn="arn:aws:iot:us-east-1:123456789012:all/things")
    device = Device(service.mqtt_port, "builder-preview-device")
    for i in range(1, 4):
        assert device.report(report(i, [22, 80, 443]))[0] == "json/accepted"
    device.close()
    now = time.time()
    span = {"startTime": now - 60, "endTime": now + 1}
    counted = client.post("/console/api/builder/preview", headers=headers, json={
        **span, "securityProfileName": "builder-preview"}).json()["behaviors"][0]
    assert counted["supported"] and counted["devicesInAlarm"] >= 1 and counted["datapoints"] >= 3
    looser = dict(FEW_PORTS, criteria={"comparisonOperator": "less-than-equals", "value": {"count": 100}})
    relaxed = client.post("/console/api/builder/preview", headers=headers, json={
        **span, "securityProfileName": "builder-preview", "behaviors": [looser]}).json()["behaviors"][0]
    assert relaxed["devicesInAlarm"] == 0 and relaxed["datapoints"] == counted["datapoints"]

    missing = client.post("/console/api/builder/preview", headers=headers, json={"securityProfileName": "nope"})
    assert missing.status_code == 404 and "does not exist" in missing.json()["message"]
    wrong = dict(FEW_PORTS, criteria={"comparisonOperator": "in-port-set", "value": {"count": 2}})
    refused = client.post("/console/api/builder/preview", headers=headers, json={"behaviors": [wrong]})
    assert refused.status_code == 400 and "few-ports" in refused.json()["message"]
    assert client.post("/console/api/builder/preview", headers=headers, content=b"[").status_code == 400
    assert client.post("/console/api/builder/preview", headers=headers, json=[1]).status_code == 400
