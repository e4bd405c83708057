"""The console's profile detail and resource pages, evidence and bulk verification in Chromium.

Same harness as test_console_browser.py (its fixtures fail the test on any JavaScript console
error or HTTP 5xx); screenshots go to ``test-artifacts/console/`` as artifacts. What the browser
does is checked on the service through boto3.
"""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.e2e.test_console_browser import console_service  # noqa: F401  (a fixture)
from tests.support.browser import shot
from tests.support.mqtt import Device, report
from tests.support.processes import ACCESS_KEY, SECRET_KEY

ARN = "arn:aws:iot:us-east-1:123456789012"
FEW_PORTS = {"name": "few-ports", "metric": "aws:num-listening-tcp-ports",
             "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 2}}}
KNOWN_PORTS = {"name": "known-ports", "metric": "aws:listening-tcp-ports",
               "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 80, 443]}}}


def log_in(tab: Page, base: str) -> None:
    tab.goto(f"{base}/console/login")
    tab.fill("input[name=access_key_id]", ACCESS_KEY)
    tab.fill("input[name=secret_access_key]", SECRET_KEY)
    tab.click("button[type=submit]")
    expect(tab).to_have_url(f"{base}/console/")


def test_profile_detail_and_resource_pages(console_service, page: Page):  # noqa: F811
    svc = console_service
    base = svc.endpoint
    iot = svc.client()
    log_in(page, base)
    iot.create_security_profile(securityProfileName="pp-prof", securityProfileDescription="ports",
                                behaviors=[dict(FEW_PORTS, criteria={"comparisonOperator": "less-than-equals",
                                                                     "value": {"count": 3}})])
    iot.update_security_profile(securityProfileName="pp-prof", behaviors=[FEW_PORTS, KNOWN_PORTS])

    # The detail page: behaviors in words; retained metrics edited in place.
    page.goto(f"{base}/console/profiles")
    page.click("text=pp-prof")
    expect(page).to_have_url(f"{base}/console/profiles/pp-prof/detail")
    expect(page.locator("#behaviors")).to_contain_text("alarms when aws:num-listening-tcp-ports is above 2")
    expect(page.locator("#behaviors")).to_contain_text(
        "alarms when aws:listening-tcp-ports includes a port outside 22 80 443")
    page.fill("#retained-form textarea[name=retained]", "aws:all-bytes-out")
    page.click("#retained-form button[type=submit]")
    expect(page.locator("#versions tbody tr")).to_have_count(3)
    retained = iot.describe_security_profile(securityProfileName="pp-prof")["additionalMetricsToRetainV2"]
    assert retained == [{"metric": "aws:all-bytes-out"}]

    # A diff between two versions, chosen in the form.
    page.select_option("#diff-form select[name=from]", "1")
    page.select_option("#diff-form select[name=to]", "2")
    page.click("#diff-form button[type=submit]")
    expect(page.locator("#diff .dadd", has_text="known-ports")).to_be_visible()
    expect(page.locator("#diff .ddel", has_text='"count": 3')).to_be_visible()

    # Tags, added and shown.
    page.fill(".add-tag input[name=key]", "team")
    page.fill(".add-tag input[name=value]", "field-ops")
    page.click(".add-tag button[type=submit]")
    expect(page.locator("table.tags")).to_contain_text("field-ops")
    assert iot.list_tags_for_resource(resourceArn=f"{ARN}:securityprofile/pp-prof")["tags"] == [
        {"Key": "team", "Value": "field-ops"}]
    shot(page, "20-profile-detail")

    # Custom metrics and dimensions.
    page.goto(f"{base}/console/custom-metrics")
    page.fill("#custom-metric-form input[name=metricName]", "temperature")
    page.select_option("#custom-metric-form select[name=metricType]", "number")
    page.click("#custom-metric-form button[type=submit]")
    expect(page.locator("#custom-metrics")).to_contain_text("temperature")
    assert iot.describe_custom_metric(metricName="temperature")["metricType"] == "number"
    shot(page, "21-custom-metrics")
    page.goto(f"{base}/console/dimensions")
    page.fill("#dimension-form input[name=name]", "telemetry")
    page.fill("#dimension-form textarea[name=stringValues]", "telemetry/#")
    page.click("#dimension-form button[type=submit]")
    expect(page.locator("#dimensions")).to_contain_text("telemetry/#")
    shot(page, "22-dimensions")

    # Thing groups: a hierarchy, a member, a profile attached to the child group.
    iot.create_thing(thingName="pp-sensor")
    page.goto(f"{base}/console/thing-groups")
    page.fill("#group-form input[name=thingGroupName]", "pp-plant")
    page.click("#group-form button[type=submit]")
    page.fill("#group-form input[name=thingGroupName]", "pp-line-1")
    page.select_option("#group-form select[name=parentGroupName]", "pp-plant")
    page.click("#group-form button[type=submit]")
    expect(page.locator("#group-tree .depth-1")).to_contain_text("pp-line-1")
    shot(page, "23-thing-groups")
    page.click("#group-tree >> text=pp-line-1")
    expect(page.locator("#group-path")).to_contain_text("pp-plant")
    page.fill("#add-thing-form input[name=thingName]", "pp-sensor")
    page.click("#add-thing-form button[type=submit]")
    expect(page.locator("#members")).to_contain_text("pp-sensor")
    page.select_option("#attach-form select[name=securityProfileName]", "pp-prof")
    page.click("#attach-form button[type=submit]")
    expect(page.locator("#attached")).to_contain_text("pp-prof")
    targets = iot.list_targets_for_security_profile(securityProfileName="pp-prof")["securityProfileTargets"]
    assert [t["arn"] for t in targets] == [f"{ARN}:thinggroup/pp-line-1"]
    shot(page, "24-thing-group")
    page.click("#attached >> text=pp-prof")
    expect(page.locator("#targets")).to_contain_text("thing group pp-line-1")


def test_evidence_charts_devices_and_bulk_verification(console_service, page: Page):  # noqa: F811
    svc = console_service
    base = svc.endpoint
    iot = svc.client()
    log_in(page, base)
    iot.create_security_profile(securityProfileName="pv-prof", behaviors=[FEW_PORTS, KNOWN_PORTS])
    iot.attach_security_profile(securityProfileName="pv-prof", securityProfileTargetArn=f"{ARN}:all/things")
    for name, ports in (("pv-dev-1", [22, 23, 4444]), ("pv-dev-2", [22, 23, 80]), ("pv-ok", [22])):
        device = Device(svc.mqtt_port, name)
        assert device.report(report(1, ports))[0] == "json/accepted"
        device.close()

    # Four active violations (two behaviors on two devices); evidence explains one in words.
    page.goto(f"{base}/console/violations?profile=pv-prof")
    expect(page.locator("#violations-table input.pick")).to_have_count(4)
    row = page.locator("#violations-table tr", has_text="pv-dev-1").filter(has_text="known-ports")
    row.locator("button[data-evidence]").click()
    body = page.locator("#evidence-body")
    expect(body).to_contain_text("alarms when aws:listening-tcp-ports includes a port outside 22 80 443")
    expect(body.locator("mark.offending", has_text="4444").first).to_be_visible()
    expect(body.locator("mark.offending", has_text="23").first).to_be_visible()
    expect(body).to_contain_text(" UTC: it went into alarm")
    shot(page, "25-evidence-explained")
    page.click("#evidence button.close")

    # Bulk verification of everything selected.
    expect(page.locator("#bulk-submit")).to_be_disabled()
    page.check("#select-all")
    expect(page.locator("#bulk-count")).to_have_text("4")
    page.select_option("#bulk-verify select[name=state]", "FALSE_POSITIVE")
    page.fill("#bulk-verify input[name=description]", "port scan drill")
    shot(page, "26-bulk-verification")
    page.click("#bulk-submit")
    expect(page.locator("#violations-table select[name=state]").first).to_have_value("FALSE_POSITIVE")
    verified = iot.list_active_violations(securityProfileName="pv-prof")["activeViolations"]
    assert len(verified) == 4 and {v["verificationState"] for v in verified} == {"FALSE_POSITIVE"}
    assert {v["verificationStateDescription"] for v in verified} == {"port scan drill"}

    # The device's chart: the threshold line and the alarm period are drawn, and said in words.
    page.goto(f"{base}/console/things/pv-dev-1?range=1h")
    chart = page.locator('#thing-charts .chart[data-metric="aws:num-listening-tcp-ports"]')
    expect(chart.locator("canvas")).to_be_visible()
    expect(chart).to_have_attribute("data-thresholds", "1")
    expect(chart).to_have_attribute("data-alarm-periods", "1")
    expect(page.locator("p.chart-marks").first).to_contain_text("threshold pv-prof/few-ports: 2")
    shot(page, "27-device-chart-marks")

    # The fleet-metrics charts too: the threshold on the histogram, the alarm period on the series.
    page.goto(f"{base}/console/metrics?metric=aws:num-listening-tcp-ports&range=1h&things=pv-dev-1")
    expect(page.locator("#histogram-chart")).to_have_attribute("data-thresholds", "1")
    expect(page.locator("#series-chart")).to_have_attribute("data-thresholds", "1")
    expect(page.locator("#series-chart")).to_have_attribute("data-alarm-periods", "1")
    shot(page, "29-fleet-metric-marks")

    # Devices: alarm state, counts, search and sorting by alarms.
    page.goto(f"{base}/console/things")
    page.fill("input[name=q]", "pv-")
    page.click("form.filters button[type=submit]")
    expect(page.locator("#device-counts")).to_contain_text("3 devices matching")
    expect(page.locator("#device-counts .state-alarm")).to_have_text("2")
    page.click("#devices th >> text=Alarm state")
    expect(page.locator("#devices tbody tr").last).to_contain_text("pv-ok")
    expect(page.locator("#devices tbody tr").first).to_contain_text("2 active violations")
    shot(page, "28-devices")


def refused_as_typed(tab: Page, form: str, values: dict[str, str], reason: str) -> None:
    """Fill ``form`` (fields by name), send it, and check that it comes back refused with
    ``reason`` shown and every field as it was typed."""
    for name, value in values.items():
        field = tab.locator(f"{form} [name={name}]")
        if field.evaluate("element => element.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    tab.locator(f"{form} button[type=submit]").click()
    expect(tab.locator("p.error[role=alert]", has_text=reason)).to_be_visible()
    for name, value in values.items():
        expect(tab.locator(f"{form} [name={name}]")).to_have_value(value)


def test_refused_forms_come_back_as_typed(console_service, page: Page):  # noqa: F811
    """A refused custom-metric, dimension, retained-metrics or tag form came back as a page of its
    own with a 'Back' link: what was typed was gone."""
    svc = console_service
    base = svc.endpoint
    iot = svc.client()
    log_in(page, base)
    iot.create_custom_metric(metricName="rf-temp", metricType="number", clientRequestToken="rf-temp-token")

    page.goto(f"{base}/console/custom-metrics")
    refused_as_typed(page, "#custom-metric-form", {"metricName": "rf-temp", "metricType": "ip-address-list",
                                                   "displayName": "Peers"}, "ResourceAlreadyExistsException")
    shot(page, "30-custom-metric-refused")
    page.fill("#custom-metric-form input[name=metricName]", "rf-peers")  # corrected, sent again
    page.click("#custom-metric-form button[type=submit]")
    expect(page.locator("#custom-metrics")).to_contain_text("rf-peers")
    assert iot.describe_custom_metric(metricName="rf-peers")["metricType"] == "ip-address-list"

    page.goto(f"{base}/console/dimensions")
    refused_as_typed(page, "#dimension-form", {"name": "rf-topics", "stringValues": "telemetry/#\na/#/b"},
                     "InvalidRequestException")
    shot(page, "31-dimension-refused")
    page.fill("#dimension-form textarea[name=stringValues]", "telemetry/#\na/+/b")
    page.click("#dimension-form button[type=submit]")
    expect(page.locator("#dimensions")).to_contain_text("a/+/b")
    refused_as_typed(page, 'form[data-dimension="rf-topics"]', {"stringValues": "telemetry/#\nx/#/y"}, "x/#/y")
    assert iot.describe_dimension(name="rf-topics")["stringValues"] == ["telemetry/#", "a/+/b"]

    iot.create_security_profile(securityProfileName="rf-prof", behaviors=[FEW_PORTS])
    page.goto(f"{base}/console/profiles/rf-prof/detail")
    refused_as_typed(page, "#retained-form", {"retained": "aws:all-bytes-out\naws:no-such-metric"},
                     "InvalidRequestException")
    refused_as_typed(page, ".add-tag", {"key": "team!", "value": "field-ops"},  # ! is no character of a key
                     "InvalidRequestException")
    shot(page, "32-tag-refused")
    assert iot.list_tags_for_resource(resourceArn=f"{ARN}:securityprofile/rf-prof")["tags"] == []
