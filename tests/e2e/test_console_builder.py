"""The behavior builder in a real browser: profiles of every criteria kind without typing JSON.

A custom metric of each value type and a dimension exist (made through boto3, as an operator
would); the test builds a profile of static count, number, port-set, CIDR-set and string-set
behaviors, a statistical one and a dimensioned one with alerts suppressed and the metric exported,
by choosing and typing in the form only. It checks the operators offered per metric, the sentence
under each behavior, inline errors from the API's own ValidateSecurityProfileBehaviors, the JSON
view in both directions, the saved profile (DescribeSecurityProfile), editing one threshold, and
the backtest page's live preview changing with the threshold. The page fixture fails the test on
any JavaScript error or HTTP 5xx; screenshots go to test-artifacts/console/.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import log_in, shot
from tests.support.mqtt import Device, report
from tests.support.processes import ServiceProcess

EXPECTED = [
    {"name": "few-ports", "metric": "aws:num-listening-tcp-ports",
     "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 3}, "consecutiveDatapointsToAlarm": 2}},
    {"name": "bytes-out-p99", "metric": "aws:all-bytes-out",
     "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p99"},
                  "durationSeconds": 300}},
    {"name": "known-ports", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 443]}}},
    {"name": "private-peers", "metric": "aws:destination-ip-addresses",
     "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/8", "192.168.0.0/16"]}}},
    {"name": "hot", "metric": "temperature",
     "criteria": {"comparisonOperator": "less-than-equals", "value": {"number": 70}, "consecutiveDatapointsToAlarm": 2,
                  "consecutiveDatapointsToClear": 3}},
    {"name": "users", "metric": "login-users",
     "criteria": {"comparisonOperator": "in-set", "value": {"strings": ["admin", "guest"]}}},
    {"name": "telemetry-rate", "metric": "aws:num-messages-sent",
     "metricDimension": {"dimensionName": "telemetry", "operator": "NOT_IN"},
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 100}, "durationSeconds": 600},
     "suppressAlerts": True, "exportMetric": True},
    {"name": "received-ml", "metric": "aws:num-messages-received",
     "criteria": {"mlDetectionConfig": {"confidenceLevel": "MEDIUM"}, "consecutiveDatapointsToAlarm": 3}},
]


@pytest.fixture(scope="module")
def service():
    svc = ServiceProcess(data_dir=Path(tempfile.mkdtemp()), extra_args=[
        "--report-min-interval", "0", "--time-scale", "100"])
    svc.start()
    iot = svc.client()
    iot.create_custom_metric(metricName="temperature", metricType="number", clientRequestToken="t1")
    iot.create_custom_metric(metricName="login-users", metricType="string-list", clientRequestToken="t2")
    iot.create_dimension(name="telemetry", type="TOPIC_FILTER", stringValues=["telemetry/#"], clientRequestToken="t3")
    yield svc
    svc.stop()


def card(page: Page, index: int):
    return page.locator("fieldset.behavior").nth(index)


def build(page: Page, behavior: dict, kind: str = "static", value: str | None = None, **fields: str) -> None:
    """Add one behavior by choosing and typing in its card (never in the JSON)."""
    page.click(".add-behavior")
    last = page.locator("fieldset.behavior").last
    last.locator("[data-field=name]").fill(behavior["name"])
    last.locator("[data-field=metric]").select_option(behavior["metric"])
    if kind != "static":
        last.locator("[data-field=kind]").select_option(kind)
    if kind != "ml":
        last.locator("[data-field=operator]").select_option(behavior["criteria"]["comparisonOperator"])
    if value is not None:
        last.locator("[data-field=value]").fill(value)
    for field, chosen in fields.items():
        control = last.locator(f"[data-field={field}]")
        if field in ("suppress", "export"):
            control.check()
        elif control.evaluate("e => e.tagName") == "SELECT":
            control.select_option(chosen)
        else:
            control.fill(chosen)


def behaviors_json(page: Page) -> list:
    return json.loads(page.input_value("textarea[name=behaviors]"))


def by_name(behaviors: list) -> dict:
    return {b["name"]: b for b in behaviors}


def test_builder_creates_edits_validates_and_previews(service, page: Page):
    base = service.endpoint
    iot = service.client()
    log_in(page, base)
    page.goto(f"{base}/console/profiles/new")
    page.fill("input[name=name]", "built")
    expect(page.locator(".empty-builder")).to_be_visible()
    expect(page.locator("textarea[name=behaviors]")).to_be_hidden()  # the builder is the default view

    build(page, EXPECTED[0], value="3", **{"to-alarm": "2"})
    build(page, EXPECTED[1], kind="statistical", statistic="p99", duration="300")
    build(page, EXPECTED[2], value="22, 443")
    build(page, EXPECTED[3], value="10.0.0.0/8, 192.168.0.0/16")
    build(page, EXPECTED[4], value="70", **{"to-alarm": "2", "to-clear": "3"})
    build(page, EXPECTED[5], value="admin, guest")
    build(page, EXPECTED[6], value="100", duration="600", dimension="telemetry", suppress="", export="")
    card(page, 6).locator("[data-field=dimension-operator]").select_option("NOT_IN")
    build(page, EXPECTED[7], kind="ml", confidence="MEDIUM", **{"to-alarm": "3"})

    # Only the operators valid for each metric are offered; ML Detect where AWS allows it.
    operators = card(page, 2).locator("[data-field=operator] option")
    expect(operators).to_have_count(2)
    assert sorted(operators.evaluate_all("os => os.map(o => o.value)")) == ["in-port-set", "not-in-port-set"]
    assert card(page, 5).locator("[data-field=operator] option").evaluate_all(
        "os => os.map(o => o.value)") == ["in-set", "not-in-set"]
    assert card(page, 2).locator("[data-field=kind] option").count() == 1  # a port set has no statistics
    kinds = card(page, 0).locator("[data-field=kind] option").evaluate_all("os => os.map(o => o.value)")
    assert kinds == ["static", "statistical", "ml"]
    # Units and value types in the metric picker.
    picker = card(page, 0).locator("[data-field=metric]").inner_text()
    assert "aws:all-bytes-out (bytes) · count" in picker and "temperature · number" in picker

    # Each behavior says in plain words when it alarms (criteria describe normal behavior).
    expect(card(page, 4).locator(".sentence")).to_have_text(
        "Alarms when temperature is above 70 for 2 consecutive datapoints; "
        "clears after 3 consecutive compliant datapoints.")
    expect(card(page, 0).locator(".sentence")).to_contain_text(
        "Alarms when number of listening TCP ports is above 3 ports for 2 consecutive datapoints")
    card(page, 0).locator("[data-field=value]").fill("1")  # the unit agrees with its number
    expect(card(page, 0).locator(".sentence")).to_contain_text("is above 1 port for 2 consecutive datapoints")
    card(page, 0).locator("[data-field=value]").fill("3")
    expect(card(page, 0).locator(".sentence")).to_contain_text("is above 3 ports for")
    expect(card(page, 1).locator(".sentence")).to_contain_text(
        "all bytes out over 5 minutes is at or above the p99 of all devices' values")
    expect(card(page, 2).locator(".sentence")).to_contain_text("include a port outside {22, 443}")
    expect(card(page, 6).locator(".sentence")).to_contain_text("No alerts are sent")
    expect(card(page, 7).locator(".sentence")).to_contain_text(
        "leaves the normal band its model learned for the device at that hour of the week "
        "(MEDIUM confidence: fewer alarms) for 3 consecutive datapoints")
    expect(card(page, 7).locator("[data-field=duration]")).to_have_count(0)  # ML criteria take no duration

    # The JSON view holds exactly what was built.
    expect(page.locator("#behavior-builder")).to_have_attribute("data-valid", "true")
    assert behaviors_json(page) == EXPECTED
    shot(page, "20-builder-new-profile")

    # Inline errors come from the API's rules, next to the behavior they concern.
    card(page, 2).locator("[data-field=value]").fill("22, 70000")
    error = card(page, 2).locator(".behavior-error")
    expect(error).to_contain_text("Behavior known-ports is malformed")
    expect(error).to_contain_text("70000")
    expect(page.locator("#behavior-builder")).to_have_attribute("data-valid", "false")
    shot(page, "21-builder-inline-error")
    card(page, 2).locator("[data-field=value]").fill("22, abc")  # not a number: said in words
    expect(error).to_contain_text('Ports are whole numbers from 0 to 65535: "abc" is not.')
    expect(error).not_to_contain_text("class")  # not botocore's Python-type message
    expect(page.locator("#behavior-builder")).to_have_attribute("data-valid", "false")
    card(page, 2).locator("[data-field=value]").fill("22, 443")
    expect(error).to_be_hidden()
    card(page, 5).locator("[data-field=name]").fill("few-ports")  # a name used twice
    expect(card(page, 0).locator(".behavior-error")).to_contain_text("used more than once")
    card(page, 5).locator("[data-field=name]").fill("users")
    expect(page.locator("#behavior-builder")).to_have_attribute("data-valid", "true")

    # JSON edits reach the builder: a threshold typed in the JSON view shows in the form and sentence.
    page.click("[data-view=json]")
    edited = json.loads(json.dumps(EXPECTED))
    edited[4]["criteria"]["value"] = {"number": 72.5}
    page.fill("textarea[name=behaviors]", json.dumps(edited))
    page.click("[data-view=builder]")
    expect(card(page, 4).locator("[data-field=value]")).to_have_value("72.5")
    page.click("[data-view=json]")  # JSON that does not parse is said to be so, and changes nothing
    page.fill("textarea[name=behaviors]", "[{")
    expect(page.locator(".builder-errors")).to_contain_text("not a list of behaviors")
    page.wait_for_timeout(1000)  # a check of the last behaviors that parsed, due or in flight, keeps it
    expect(page.locator(".builder-errors")).to_contain_text("not a list of behaviors")
    expect(page.locator("#behavior-builder")).to_have_attribute("data-valid", "false")
    page.fill("textarea[name=behaviors]", json.dumps(edited))
    page.click("[data-view=builder]")
    expect(page.locator("fieldset.behavior")).to_have_count(len(EXPECTED))
    expect(card(page, 4).locator(".sentence")).to_contain_text("temperature is above 72.5 for 2")
    card(page, 4).locator("[data-field=value]").fill("70")
    assert behaviors_json(page) == EXPECTED

    page.click("form#profile-form button[type=submit]")
    expect(page.get_by_role("status")).to_have_text("Created.")  # said on creation too, not only on edit
    expect(page).to_have_url(f"{base}/console/profiles/built?created=1")
    saved = iot.describe_security_profile(securityProfileName="built")
    assert saved["behaviors"] == EXPECTED
    version = saved["version"]

    # Edit one threshold of the saved profile in the builder; nothing else changes.
    expect(card(page, 0).locator("[data-field=value]")).to_have_value("3")
    card(page, 0).locator("[data-field=value]").fill("5")
    expect(card(page, 0).locator(".sentence")).to_contain_text("is above 5 ports")
    shot(page, "22-builder-edit-threshold")
    page.click("form#profile-form button[type=submit]")
    expect(page.get_by_role("status")).to_have_text("Saved.")
    saved = iot.describe_security_profile(securityProfileName="built")
    assert saved["version"] == version + 1
    assert by_name(saved["behaviors"])["few-ports"]["criteria"]["value"] == {"count": 5}
    assert {k: v for k, v in by_name(saved["behaviors"]).items() if k != "few-ports"} == {
        k: v for k, v in by_name(EXPECTED).items() if k != "few-ports"}

    # "Backtest these behaviors" carries what the builder holds to the backtest page's builder.
    page.click("#backtest-these")
    expect(page).to_have_url(f"{base}/console/backtest")
    expect(page.locator("fieldset.behavior")).to_have_count(len(EXPECTED))
    expect(card(page, 0).locator("[data-field=value]")).to_have_value("5")

    # Live preview on the backtest page: a device with 4 open ports, thresholds moved in the builder.
    device = Device(service.mqtt_port, "preview-device")
    for i in range(1, 5):
        assert device.report(report(i, [22, 80, 443, 8080]))[0] == "json/accepted"
    device.close()
    page.goto(f"{base}/console/backtest?profile=built")
    page.select_option("#bt-range", "1h")
    preview = card(page, 0).locator(".preview")
    expect(preview).to_contain_text("0 of 1 devices would have alarmed")
    expect(card(page, 2).locator(".preview")).to_contain_text("No live preview")
    card(page, 0).locator("[data-field=value]").fill("3")
    expect(preview).to_contain_text("1 of 1 devices would have alarmed")
    # Four reports within a second of a 36 s range (1h at --time-scale 100): the count says so.
    expect(preview).to_contain_text("of the range has history")
    expect(page.locator("#bt-preview-status")).to_contain_text(re.compile(r"Preview in \d+\.\d\d s"))
    assert float(page.locator("#bt-preview-status").get_attribute("data-seconds")) < 1.0
    shot(page, "23-builder-backtest-preview")
    # The full backtest runs what the builder shows (the edited threshold), and agrees.
    page.click("#backtest-form button[type=submit]")
    result = page.locator("#bt-results .bt-behavior").first
    expect(result).to_contain_text("few-ports")
    expect(result.locator(".bt-devices")).to_have_text("1")


def test_a_view_chosen_while_the_catalog_loads_is_the_one_shown(service, page: Page):
    """Clicking JSON before the builder's catalog arrived was lost: the builder then hid the JSON
    the operator had asked for (a browser test filling it failed under load)."""
    import time

    base = service.endpoint
    log_in(page, base)

    def slow_catalog(route) -> None:  # type: ignore[no-untyped-def]
        time.sleep(1.0)
        route.continue_()

    page.route("**/console/api/builder/catalog", slow_catalog)
    page.goto(f"{base}/console/profiles/new", wait_until="domcontentloaded")
    page.click("[data-view=json]")
    expect(page.locator("#behavior-builder")).to_have_class(re.compile(r"\bready\b"))
    expect(page.locator("textarea[name=behaviors]")).to_be_visible()
    expect(page.locator("[data-view=json]")).to_have_attribute("aria-pressed", "true")
