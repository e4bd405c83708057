"""The console in a real browser: Playwright driving Debian's Chromium, headless.

Log in, create a profile from the console (after a refused one shows its error inline), watch a
violation caused by a real MQTT device appear without reloading, set its verification state, look
at evidence, fleet metrics and the device page, run a backtest. Every page is screenshotted into
``test-artifacts/console/`` (or $IOTDEFENDER_TEST_ARTIFACTS) for people to look at.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import shot
from tests.support.mqtt import Device, report
from tests.support.processes import ACCESS_KEY, SECRET_KEY, ServiceProcess

FEW_PORTS = {"name": "few-ports", "metric": "aws:num-listening-tcp-ports",
             "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 2}}}


@pytest.fixture(scope="module")
def console_service():
    svc = ServiceProcess(data_dir=Path(tempfile.mkdtemp()), extra_args=[
        "--report-min-interval", "0", "--time-scale", "100"])
    svc.start()
    yield svc
    svc.stop()


def test_console_end_to_end(console_service, page: Page):
    svc = console_service
    base = svc.endpoint
    iot = svc.client()

    # Nothing is readable without logging in; a wrong secret is refused.
    page.goto(f"{base}/console/profiles/new")
    expect(page).to_have_url(f"{base}/console/login?next=/console/profiles/new")
    shot(page, "01-login")
    page.fill("input[name=access_key_id]", ACCESS_KEY)
    page.fill("input[name=secret_access_key]", "not-the-secret")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("wrong secret access key")
    page.fill("input[name=access_key_id]", ACCESS_KEY)
    page.fill("input[name=secret_access_key]", SECRET_KEY)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{base}/console/profiles/new")

    # A refused profile shows the reason inline and keeps what was typed.
    bad = [dict(FEW_PORTS, criteria={"comparisonOperator": "in-port-set", "value": {"count": 2}})]
    page.fill("input[name=name]", "console-made")
    page.click("[data-view=json]")  # the raw JSON, for those who prefer it (the builder has its own test)
    page.fill("textarea[name=behaviors]", json.dumps(bad))
    page.click("form#profile-form button[type=submit]")
    expect(page.locator(".error.field")).to_contain_text("InvalidRequestException")
    assert json.loads(page.input_value("textarea[name=behaviors]")) == bad
    shot(page, "02-profile-refused")
    page.click("[data-view=json]")
    page.fill("textarea[name=behaviors]", json.dumps([FEW_PORTS]))
    page.click("form#profile-form button[type=submit]")
    expect(page).to_have_url(f"{base}/console/profiles/console-made?created=1")
    assert iot.describe_security_profile(securityProfileName="console-made")["behaviors"] == [FEW_PORTS]
    targets = iot.list_targets_for_security_profile(securityProfileName="console-made")["securityProfileTargets"]
    assert [t["arn"] for t in targets] == ["arn:aws:iot:us-east-1:123456789012:all/things"]
    shot(page, "03-profile-edit")

    # A device violates while the violations page is open: the row appears without a reload.
    page.goto(f"{base}/console/violations")
    expect(page.locator("#live-status.on")).to_be_visible()
    page.evaluate("window.__notReloaded = true")
    device = Device(svc.mqtt_port, "pw-device")
    assert device.report(report(1, [22, 80, 443]))[0] == "json/accepted"
    row = page.locator("#violations-table tr.fresh", has_text="pw-device")
    expect(row).to_be_visible(timeout=10_000)
    expect(row).to_contain_text("3 ports")  # the live row writes the value with its unit
    assert page.evaluate("window.__notReloaded") is True
    expect(page.locator("#toasts .toast")).to_contain_text("in-alarm: pw-device")
    # Its duration counts up on the open page (it read "0 s" for as long as the page stayed open).
    expect(row.locator("td.duration")).not_to_have_text("0 s", timeout=5_000)
    shot(page, "04-violation-live")

    # Set its verification state from that row.
    row.locator("select[name=state]").select_option("TRUE_POSITIVE")
    row.locator("input[name=description]").fill("confirmed from the console")
    row.locator("button[type=submit]").click()
    expect(page.locator("#violations-table tr[data-violation] select[name=state]")).to_have_value("TRUE_POSITIVE")
    (active,) = iot.list_active_violations(verificationState="TRUE_POSITIVE")["activeViolations"]
    assert active["thingName"] == "pw-device"
    assert active["verificationStateDescription"] == "confirmed from the console"

    # Its evidence: the datapoint and the threshold it broke.
    page.click("#violations-table button[data-evidence]")
    expect(page.locator("#evidence-body")).to_contain_text("reported value 3 ports")  # units, as the sentence
    expect(page.locator("#evidence-body")).to_contain_text("threshold 2 ports")
    shot(page, "05-evidence")
    page.click("#evidence button.close")

    for i in range(2, 6):
        assert device.report(report(i, [22] if i % 2 else [22, 80, 443]))[0] == "json/accepted"
    device.close()

    page.goto(f"{base}/console/")
    expect(page.locator("#live-events")).to_contain_text("pw-device")
    shot(page, "06-overview")
    page.goto(f"{base}/console/metrics?metric=aws:num-listening-tcp-ports&range=1h")
    expect(page.locator("table.percentiles")).to_be_visible()
    expect(page.locator("#histogram-chart canvas")).to_be_visible()
    assert "--" not in page.locator("#histogram-chart .u-legend").inner_text()  # no value-less "--"
    shot(page, "07-fleet-metrics")
    page.goto(f"{base}/console/things/pw-device?range=1h")
    expect(page.locator("#thing-charts canvas").first).to_be_visible()
    expect(page.get_by_text("console-made").first).to_be_visible()
    shot(page, "08-device")
    page.goto(f"{base}/console/profiles")
    expect(page.locator("table")).to_contain_text("few-ports")
    shot(page, "09-profiles")
    page.goto(f"{base}/console/violations?view=history")
    expect(page.locator("#violations-table")).to_contain_text("alarm-cleared")
    shot(page, "10-violation-history")

    # Backtest the saved profile over the last hour: the one device alarmed, with a sweep.
    page.goto(f"{base}/console/backtest?profile=console-made")
    page.select_option("#bt-range", "1h")
    page.fill("#bt-thresholds", "few-ports=1,3")
    page.click("#backtest-form button[type=submit]")
    result = page.locator("#bt-results .bt-behavior")
    expect(result).to_contain_text("few-ports")
    expect(result.locator(".bt-devices")).to_have_text("1")
    expect(result.locator("table.sweep tr.current")).to_contain_text("2 (current)")
    expect(result.locator("table.sweep")).to_contain_text("3")
    shot(page, "11-backtest")

    # Deleting asks first (a listener, since the policy allows no inline script): no keeps it.
    iot.create_security_profile(securityProfileName="pw-delete-me")
    page.goto(f"{base}/console/profiles/pw-delete-me")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("form.danger button.danger")
    expect(page).to_have_url(f"{base}/console/profiles/pw-delete-me")
    assert iot.describe_security_profile(securityProfileName="pw-delete-me")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("form.danger button.danger")
    expect(page).to_have_url(f"{base}/console/profiles")
    names = [p["name"] for p in iot.list_security_profiles()["securityProfileIdentifiers"]]
    assert "pw-delete-me" not in names

    # Logging out ends the session.
    page.click("header form.logout button")
    page.goto(f"{base}/console/")
    expect(page).to_have_url(f"{base}/console/login?next=/console/")


def test_console_rough_edges(console_service, page: Page):
    """Each of these was wrong once: a red zero, legends reading "--", fractional ticks on counts,
    a failed backtest shown above the previous result, "first alarm - UTC" for no alarm."""
    svc = console_service
    base = svc.endpoint
    iot = svc.client()
    page.goto(f"{base}/console/login")
    page.fill("input[name=access_key_id]", ACCESS_KEY)
    page.fill("input[name=secret_access_key]", SECRET_KEY)
    page.click("button[type=submit]")

    device = Device(svc.mqtt_port, "edge-device")
    for i in range(1, 4):
        assert device.report(report(i, [22]))[0] == "json/accepted"
    device.close()

    page.goto(f"{base}/console/")
    active = len(iot.list_active_violations()["activeViolations"])
    card = page.locator(".card.alert")
    expect(page.locator("#active-count")).to_have_text(str(active))
    assert ("in-violation" in (card.get_attribute("class") or "")) == (active > 0)
    if active == 0:
        colour = page.evaluate("getComputedStyle(document.querySelector('#active-count')).color")
        assert colour != "rgb(220, 38, 38)", "zero active violations must not be shown as an alarm"

    page.goto(f"{base}/console/things/edge-device?range=1h")
    chart = page.locator("#thing-charts .chart").first
    expect(chart.locator("canvas")).to_be_visible()
    legend = chart.locator(".u-legend").inner_text()
    assert "--" not in legend and "UTC" in legend, legend
    ticks = page.evaluate("document.querySelector('#thing-charts .chart').chart.axes[1]._splits")
    assert ticks and all(float(t).is_integer() for t in ticks), ticks  # a port count has no 1.5
    # The time axis on a 24-hour clock with ISO dates, like every other time on the console.
    times = page.evaluate("document.querySelector('#thing-charts .chart').chart.axes[0]._values")
    assert times and all(re.fullmatch(r"\d\d:\d\d(:\d\d)?(\n(\d{4}-)?\d\d-\d\d)?", t) for t in times), times
    case = page.evaluate("getComputedStyle(document.querySelector('#thing-charts .u-legend th')).textTransform")
    assert case == "none", case  # series names keep their case

    page.goto(f"{base}/console/backtest")
    never = [{"name": "never", "metric": "aws:num-listening-tcp-ports",
              "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 1000}}}]
    page.click("[data-view=json]")
    page.fill("#bt-behaviors", json.dumps(never))
    page.select_option("#bt-range", "1h")
    page.click("#backtest-form button[type=submit]")
    result = page.locator("#bt-results .bt-behavior")
    expect(result).to_contain_text("no alarm")
    assert "first alarm - UTC" not in result.inner_text()
    page.fill("#bt-thresholds", "Nope=1,2")
    page.click("#backtest-form button[type=submit]")
    expect(page.locator("#bt-error")).to_contain_text("Nope")
    expect(page.locator("#bt-results")).to_be_hidden()
    shot(page, "12-backtest-refused")
