"""The console's profile detail, resource pages, devices list, evidence and bulk verification
over plain HTTP, on SQLite and PostgreSQL: every write lands as the AWS operation would (checked
through boto3), and bad input on every new page gets an AWS-shaped refusal, never a 500.
"""

from __future__ import annotations

import html
import json
import re
import time

import httpx
import pytest

from tests.e2e.test_console_http import logged_in
from tests.support.mqtt import Device, report

SERVICE_ARGS = ["--report-min-interval", "0", "--time-scale", "100"]
ARN = "arn:aws:iot:us-east-1:123456789012"
FEW_PORTS = {"name": "few-ports", "metric": "aws:num-listening-tcp-ports",
             "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 2}}}
KNOWN_PORTS = {"name": "known-ports", "metric": "aws:listening-tcp-ports",
               "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 80, 443]}}}


def post(client: httpx.Client, token: str, path: str, **data) -> httpx.Response:
    return client.post(path, data={"csrf": token, **data})


def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_profile_detail_sentences_retained_metrics_tags_and_version_diff(service):
    client, token = logged_in(service)
    iot = service.client()
    iot.create_security_profile(securityProfileName="pd-prof", securityProfileDescription="detail",
                                behaviors=[FEW_PORTS])
    iot.update_security_profile(securityProfileName="pd-prof", behaviors=[
        dict(FEW_PORTS, criteria={"comparisonOperator": "less-than-equals", "value": {"count": 5}})])
    saved = post(client, token, "/console/profiles/pd-prof/retained", version="2",
                 retained="aws:num-messages-sent\naws:all-bytes-out")
    assert saved.status_code == 303, saved.text
    described = iot.describe_security_profile(securityProfileName="pd-prof")
    assert described["version"] == 3
    assert [m["metric"] for m in described["additionalMetricsToRetainV2"]] == ["aws:num-messages-sent",
                                                                              "aws:all-bytes-out"]
    stale = post(client, token, "/console/profiles/pd-prof/retained", version="2", retained="aws:all-bytes-in")
    assert stale.status_code == 409 and "VersionConflictException" in stale.text
    unknown_metric = post(client, token, "/console/profiles/pd-prof/retained", retained="no-such-metric")
    assert unknown_metric.status_code == 400 and "InvalidRequestException" in unknown_metric.text

    page = client.get("/console/profiles/pd-prof/detail")
    assert page.status_code == 200
    assert "alarms when aws:num-listening-tcp-ports is above 5" in page.text
    assert re.findall(r"<tr><td>(\d+)</td><td>\d{4}-", page.text) == ["3", "2", "1"]
    assert "aws:num-messages-sent\naws:all-bytes-out</textarea>" in page.text

    diff = html.unescape(client.get("/console/profiles/pd-prof/detail?from=1&to=2").text)
    assert re.search(r'<span class="ddel">-\s+"count": 2', diff) and re.search(r'<span class="dadd">\+\s+"count": 5',
                                                                               diff)
    retained_diff = html.unescape(client.get("/console/profiles/pd-prof/detail?from=2&to=3").text)
    assert re.search(r'<span class="dadd">\+\s+"metric": "aws:all-bytes-out"', retained_diff)

    arn = described["securityProfileArn"]
    assert post(client, token, "/console/tags", resourceArn=arn, key="team", value="ops",
                next="/console/profiles/pd-prof/detail").headers["location"] == "/console/profiles/pd-prof/detail"
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == [{"Key": "team", "Value": "ops"}]
    assert "<td>team</td><td>ops</td>" in client.get("/console/profiles/pd-prof/detail").text
    assert post(client, token, "/console/tags", resourceArn=arn, remove="team").status_code == 303
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == []


@pytest.mark.parametrize(("path", "status"), [
    ("/console/profiles/pd-none/detail", 404),
    ("/console/profiles/pd-none", 404),
    ("/console/profiles/pd-bad/detail?from=x&to=1", 400),
    ("/console/profiles/pd-bad/detail?from=1&to=99", 400),
    ("/console/thing-groups/no-such-group", 404),
    ("/console/things?sort=bogus", 400),
    ("/console/things?offset=-1&q=%25_%00", 400),
    ("/console/things?offset=abc&q=%25_", 200),
    ("/console/violations/nope/evidence", 404),
    ("/console/violations/" + "x" * 200 + "/evidence", 400),
    ("/console/metrics?metric=aws:all-bytes-in", 200),
    ("/console/metrics?metric=aws:all-bytes-in&group=no-such-group", 404),
    ("/console/backtest?profile=no-such-profile", 404),
    ("/console/backtest", 200),
    ("/console/custom-metrics?x=1", 200),
    ("/console/dimensions", 200),
    ("/console/thing-groups", 200),
])
def test_new_pages_answer_bad_queries(service, path, status):
    client, _ = logged_in(service)
    service.client().create_security_profile(securityProfileName="pd-bad") if "pd-bad" in path and not \
        any(p["name"] == "pd-bad" for p in service.client().list_security_profiles()["securityProfileIdentifiers"]) \
        else None
    answer = client.get(path)
    assert answer.status_code == status, (path, answer.status_code, answer.text[:300])
    if status == 404:  # said like the API says it: with the exception's name
        assert "ResourceNotFoundException" in answer.text, (path, answer.text[-800:])
    if "</html>" in answer.text:  # a whole page (not a fragment or a plain-text refusal)
        assert "Time scale 100: ranges are AWS time divided by 100." in answer.text  # not "100.0"


@pytest.mark.parametrize(("path", "data", "status", "code"), [
    ("/console/custom-metrics", {"metricName": "cm-bad", "metricType": "nonsense"}, 400, "InvalidRequestException"),
    ("/console/custom-metrics", {"metricName": "", "metricType": "number"}, 400, "InvalidRequestException"),
    ("/console/custom-metrics/none-such/delete", {}, 200, None),
    ("/console/dimensions", {"name": "dim-bad", "stringValues": ""}, 400, "InvalidRequestException"),
    ("/console/dimensions", {"name": "bad name!", "stringValues": "a/#"}, 400, "InvalidRequestException"),
    ("/console/thing-groups", {"thingGroupName": "tg-orphan", "parentGroupName": "tg-none"}, 400,
     "InvalidRequestException"),
    ("/console/thing-groups/tg-none/add-thing", {"thingName": "x"}, 404, "ResourceNotFoundException"),
    ("/console/thing-groups/tg-none/attach", {"securityProfileName": "x"}, 404, "ResourceNotFoundException"),
    ("/console/thing-groups/tg-none/fly", {}, 404, None),
    ("/console/tags", {"resourceArn": "not-an-arn", "key": "k", "value": "v"}, 404, "ResourceNotFoundException"),
    ("/console/tags", {"resourceArn": f"{ARN}:securityprofile/none", "key": "", "value": "v"}, 400,
     "InvalidRequestException"),
    ("/console/violations/verification", {}, 400, "InvalidRequestException"),
    ("/console/violations/verification", {"violationId": "nope", "state": "MAYBE"}, 400, "InvalidRequestException"),
    ("/console/violations/verification", {"violationId": "nope", "state": "TRUE_POSITIVE"}, 400,
     "Violation nope does not exist"),
    ("/console/profiles/none-such/retained", {"retained": "aws:all-bytes-in"}, 404, "ResourceNotFoundException"),
])
def test_new_forms_refuse_bad_input_as_aws_would(service, path, data, status, code):
    client, token = logged_in(service)
    answer = post(client, token, path, **data)
    expected = 303 if status == 200 else status
    assert answer.status_code == expected, (path, answer.status_code, answer.text[:300])
    if code:
        assert code in answer.text


def test_custom_metrics_dimensions_and_thing_groups_through_the_console(service):
    client, token = logged_in(service)
    iot = service.client()
    assert post(client, token, "/console/custom-metrics", metricName="cm-temp", metricType="number",
                displayName="Temperature").status_code == 303
    assert iot.describe_custom_metric(metricName="cm-temp")["displayName"] == "Temperature"
    again = post(client, token, "/console/custom-metrics", metricName="cm-temp", metricType="string-list")
    assert again.status_code == 409 and "ResourceAlreadyExistsException" in again.text
    assert "<td>cm-temp</td><td>number</td>" in client.get("/console/custom-metrics").text
    assert "cm-temp" in client.get("/console/metrics").text  # offered even before it has history

    assert post(client, token, "/console/dimensions", name="dim-topics",
                stringValues="telemetry/#\ncommands/+").status_code == 303
    assert iot.describe_dimension(name="dim-topics")["stringValues"] == ["telemetry/#", "commands/+"]
    assert post(client, token, "/console/dimensions/dim-topics/delete").status_code == 303
    assert "dim-topics" not in iot.list_dimensions()["dimensionNames"]
    assert post(client, token, "/console/custom-metrics/cm-temp/delete").status_code == 303
    assert "cm-temp" not in iot.list_custom_metrics()["metricNames"]

    assert post(client, token, "/console/thing-groups", thingGroupName="tg-site").status_code == 303
    assert post(client, token, "/console/thing-groups", thingGroupName="tg-floor",
                parentGroupName="tg-site", description="first floor").status_code == 303
    assert iot.describe_thing_group(thingGroupName="tg-floor")["thingGroupMetadata"]["parentGroupName"] == "tg-site"
    tree = client.get("/console/thing-groups").text
    assert re.search(r'class="depth-0">.*tg-site.*\n.*class="depth-1">└ .*tg-floor', tree)
    iot.create_thing(thingName="tg-dev")
    iot.create_security_profile(securityProfileName="tg-prof", behaviors=[FEW_PORTS])
    assert post(client, token, "/console/thing-groups/tg-floor/add-thing", thingName="tg-dev").status_code == 303
    assert iot.list_things_in_thing_group(thingGroupName="tg-floor")["things"] == ["tg-dev"]
    # A device that reports but was never registered: refused with what to do, then registered and added.
    refused = post(client, token, "/console/thing-groups/tg-floor/add-thing", thingName="tg-new")
    assert refused.status_code == 404 and "register it first" in refused.text
    assert post(client, token, "/console/thing-groups/tg-floor/add-thing", thingName="tg-new",
                register="1").status_code == 303
    assert sorted(iot.list_things_in_thing_group(thingGroupName="tg-floor")["things"]) == ["tg-dev", "tg-new"]
    assert post(client, token, "/console/thing-groups/tg-floor/add-thing", thingName="tg-dev",
                register="1").status_code == 303  # registered already: added, not refused
    assert post(client, token, "/console/thing-groups/tg-floor/remove-thing", thingName="tg-new").status_code == 303
    assert post(client, token, "/console/thing-groups/tg-floor/attach",
                securityProfileName="tg-prof").status_code == 303
    targets = iot.list_targets_for_security_profile(securityProfileName="tg-prof")["securityProfileTargets"]
    assert [t["arn"] for t in targets] == [f"{ARN}:thinggroup/tg-floor"]
    group_page = client.get("/console/thing-groups/tg-floor").text
    assert "tg-site</a> › <strong>tg-floor" in group_page and "/console/profiles/tg-prof/detail" in group_page
    assert "thing group tg-floor" in client.get("/console/profiles/tg-prof/detail").text
    busy = post(client, token, "/console/thing-groups/tg-site/delete")
    assert busy.status_code == 400 and "child groups" in busy.text
    assert post(client, token, "/console/thing-groups/tg-floor/detach", securityProfileName="tg-prof").status_code == 303
    assert iot.list_targets_for_security_profile(securityProfileName="tg-prof")["securityProfileTargets"] == []
    assert post(client, token, "/console/thing-groups/tg-floor/remove-thing", thingName="tg-dev").status_code == 303
    assert post(client, token, "/console/thing-groups/tg-floor/delete").status_code == 303
    assert "tg-floor" not in [g["groupName"] for g in iot.list_thing_groups()["thingGroups"]]


def test_evidence_devices_list_and_bulk_verification(service):
    client, token = logged_in(service)
    iot = service.client()
    iot.create_security_profile(securityProfileName="bv-prof", behaviors=[KNOWN_PORTS])
    iot.attach_security_profile(securityProfileName="bv-prof", securityProfileTargetArn=f"{ARN}:all/things")
    try:
        for name, ports in (("bv-dev-1", [22, 23, 4444]), ("bv-dev-2", [22, 23]), ("bv-quiet", [22])):
            device = Device(service.mqtt_port, name)
            assert device.report(report(1, ports))[0] == "json/accepted"
            device.close()

        def active() -> list[dict]:
            found = iot.list_active_violations(securityProfileName="bv-prof")["activeViolations"]
            return found if len(found) == 2 else []

        violations = wait_for(active)
        assert {v["thingName"] for v in violations} == {"bv-dev-1", "bv-dev-2"}
        first = next(v for v in violations if v["thingName"] == "bv-dev-1")

        evidence = client.get(f"/console/violations/{first['violationId']}/evidence").text
        assert "alarms when aws:listening-tcp-ports includes a port outside 22 80 443" in evidence
        assert "reported value 22 <mark class=\"offending\">23</mark> <mark class=\"offending\">4444</mark>" in evidence
        assert re.search(r"<strong>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</strong>: it went into alarm", evidence)

        devices = client.get("/console/things?q=bv-&sort=alarms").text
        assert re.search(r"<strong>3</strong> devices matching “bv-”,\s+<strong class=\"state-alarm\">2</strong> in alarm",
                         devices)
        order = re.findall(r'<a href="/console/things/(bv-[a-z0-9-]+)">', devices)
        assert order[-1] == "bv-quiet" and "in alarm (1 active violation)" in devices
        by_name = re.findall(r'<a href="/console/things/(bv-[a-z0-9-]+)">', client.get(
            "/console/things?q=bv-&sort=name&order=desc").text)
        assert by_name == ["bv-quiet", "bv-dev-2", "bv-dev-1"]

        listing = client.get("/console/violations?profile=bv-prof").text
        assert listing.count('class="pick"') == 2 and re.search(r'<td class="duration" data-age="[0-9.]+">\d+ (s|min)</td>', listing)
        # Refused, the list comes back as filtered with the form as typed: the picked row, the
        # state, the note; one row's own form likewise, in its row.
        back = "/console/violations?profile=bv-prof"
        refused = client.post("/console/violations/verification", data={
            "csrf": token, "violationId": [first["violationId"]], "state": "MAYBE", "description": "lab", "next": back})
        assert refused.status_code == 400 and "InvalidRequestException" in refused.text
        assert re.findall(r'value="([^"]+)" form="bulk-verify" class="pick" checked', refused.text) == [
            first["violationId"]]
        assert _selected(refused.text, 'id="bulk-verify"', "state") == ["MAYBE"]
        assert _field(refused.text, "bulk-verify", "description") == "lab"
        note = "n" * 1001  # AWS takes 1000 characters at most
        row = client.post(f"/console/violations/{first['violationId']}/verification", data={
            "csrf": token, "state": "TRUE_POSITIVE", "description": note, "next": back})
        assert row.status_code == 400 and row.text.count('class="pick"') == 2
        form = f'action="/console/violations/{first["violationId"]}/verification"'
        assert _field(row.text, form, "description") == note
        assert _selected(row.text, form, "state") == ["TRUE_POSITIVE"]
        assert re.search(form + r'.*?</form><p class="error field" role="alert">InvalidRequestException', row.text,
                         re.S)
        done = client.post("/console/violations/verification", data={
            "csrf": token, "violationId": [v["violationId"] for v in violations], "state": "BENIGN_POSITIVE",
            "description": "lab devices", "next": "/console/violations?profile=bv-prof"})
        assert done.status_code == 303 and done.headers["location"] == "/console/violations?profile=bv-prof"
        states = {(v["verificationState"], v.get("verificationStateDescription"))
                  for v in iot.list_active_violations(securityProfileName="bv-prof")["activeViolations"]}
        assert states == {("BENIGN_POSITIVE", "lab devices")}
    finally:
        iot.delete_security_profile(securityProfileName="bv-prof")


NEW_PAGES = ["/console/profiles/x/detail", "/console/custom-metrics", "/console/dimensions", "/console/thing-groups",
             "/console/thing-groups/x", "/console/violations/x/evidence"]
NEW_FORMS = ["/console/profiles/x/retained", "/console/tags", "/console/custom-metrics", "/console/custom-metrics/x/delete",
             "/console/dimensions", "/console/dimensions/x/delete", "/console/thing-groups",
             "/console/thing-groups/x/attach", "/console/violations/verification"]


def test_new_pages_need_a_session_and_new_forms_the_csrf_token(service):
    anonymous = httpx.Client(base_url=service.endpoint, follow_redirects=False)
    for path in NEW_PAGES:
        answer = anonymous.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/console/login"), path
    client, _ = logged_in(service)
    for path in NEW_FORMS:
        answer = client.post(path, data={"csrf": "forged", "metricName": "csrf-x", "metricType": "number",
                                         "thingGroupName": "csrf-x"})
        assert answer.status_code == 403, path
    iot = service.client()
    assert "csrf-x" not in iot.list_custom_metrics()["metricNames"]
    assert "csrf-x" not in [g["groupName"] for g in iot.list_thing_groups()["thingGroups"]]


def _field(page: str, form_id: str, name: str) -> str | None:
    """The value an input of a form (by its id, or a part of its <form> tag) is shown with (None:
    the input is empty)."""
    attrs = form_id if "=" in form_id else f'id="{form_id}"'
    form = re.search(rf'<form[^>]*{attrs}.*?</form>', page, re.S)
    assert form, form_id
    found = re.search(rf'<input name="{name}"[^>]*value="([^"]*)"', form.group(0))
    return html.unescape(found.group(1)) if found and found.group(1) else None


def test_a_refused_thing_group_form_comes_back_as_typed(service):
    """A refusal used to be a page of its own with a 'Back' link: what was typed was gone."""
    client, token = logged_in(service)
    service.client().create_thing_group(thingGroupName="rt-site")
    refused = post(client, token, "/console/thing-groups", thingGroupName="rt bad!", parentGroupName="rt-site",
                   description="north <wing>")
    assert refused.status_code == 400 and "InvalidRequestException" in refused.text
    assert _field(refused.text, "group-form", "thingGroupName") == "rt bad!"
    assert _field(refused.text, "group-form", "description") == "north <wing>"
    assert "<option selected>rt-site</option>" in refused.text and 'id="group-tree"' in refused.text

    unregistered = post(client, token, "/console/thing-groups/rt-site/add-thing", thingName="rt-dev-9")
    assert unregistered.status_code == 404 and "register it first" in unregistered.text
    assert "<h1>Thing group rt-site</h1>" in unregistered.text  # the group page, not a message page
    assert _field(unregistered.text, "add-thing-form", "thingName") == "rt-dev-9"
    assert _field(client.get("/console/thing-groups/rt-site").text, "add-thing-form", "thingName") is None


def _textarea(page: str, form_attrs: str, name: str) -> str:
    """The text a textarea of a form is shown with (``form_attrs``: a part of its <form> tag)."""
    form = re.search(rf'<form[^>]*{form_attrs}.*?</form>', page, re.S)
    assert form, form_attrs
    found = re.search(rf'<textarea name="{name}"[^>]*>(.*?)</textarea>', form.group(0), re.S)
    assert found, name
    return html.unescape(found.group(1))


def _selected(page: str, form_attrs: str, name: str) -> list[str]:
    """The options of a form's select shown selected."""
    form = re.search(rf'<form[^>]*{form_attrs}.*?</form>', page, re.S)
    assert form, form_attrs
    select = re.search(rf'<select name="{name}"[^>]*>(.*?)</select>', form.group(0), re.S)
    assert select, name
    return [html.unescape(o) for o in re.findall(r"<option[^>]*\bselected\b[^>]*>([^<]*)</option>", select.group(1))]


def _reasons(page: str) -> list[str]:
    return [html.unescape(r) for r in re.findall(r'<p class="error[^"]*" role="alert">(.*?)</p>', page, re.S)]


def test_refused_custom_metric_forms_come_back_as_typed(service):
    """A refused custom-metric form was a page of its own with a 'Back' link: what was typed was gone."""
    client, token = logged_in(service)
    iot = service.client()
    iot.create_custom_metric(metricName="rc-temp", metricType="number", displayName="Temperature",
                             clientRequestToken="rc-temp-token")

    duplicate = post(client, token, "/console/custom-metrics", metricName="rc-temp", metricType="string-list",
                     displayName="Room <temp>")
    assert duplicate.status_code == 409 and 'id="custom-metrics"' in duplicate.text
    assert any(r.startswith("ResourceAlreadyExistsException: ") for r in _reasons(duplicate.text))
    assert _field(duplicate.text, "custom-metric-form", "metricName") == "rc-temp"
    assert _field(duplicate.text, "custom-metric-form", "displayName") == "Room <temp>"
    assert _selected(duplicate.text, 'id="custom-metric-form"', "metricType") == ["string-list"]

    bad_type = post(client, token, "/console/custom-metrics", metricName="rc-new", metricType="percent")
    assert bad_type.status_code == 400 and any(r.startswith("InvalidRequestException: ") for r in _reasons(bad_type.text))
    assert _field(bad_type.text, "custom-metric-form", "metricName") == "rc-new"
    assert _selected(bad_type.text, 'id="custom-metric-form"', "metricType") == ["percent"]
    assert "rc-new" not in iot.list_custom_metrics()["metricNames"]

    # Its display name, edited in place: refused (too long) it comes back in its row as typed.
    assert post(client, token, "/console/custom-metrics/rc-temp/update", displayName="Air temperature"
                ).status_code == 303
    assert iot.describe_custom_metric(metricName="rc-temp")["displayName"] == "Air temperature"
    long_name = "T" * 129
    too_long = post(client, token, "/console/custom-metrics/rc-temp/update", displayName=long_name)
    assert too_long.status_code == 400 and any("displayName" in r for r in _reasons(too_long.text))
    assert _field(too_long.text, 'data-metric="rc-temp"', "displayName") == long_name
    assert iot.describe_custom_metric(metricName="rc-temp")["displayName"] == "Air temperature"
    assert _field(client.get("/console/custom-metrics").text, "custom-metric-form", "metricName") is None

    # Deleting one a profile uses: refused, on the list, with the reason.
    iot.create_security_profile(securityProfileName="rc-prof", additionalMetricsToRetainV2=[{"metric": "rc-temp"}])
    in_use = post(client, token, "/console/custom-metrics/rc-temp/delete")
    assert in_use.status_code == 400 and 'id="custom-metrics"' in in_use.text
    assert any("used by security profile rc-prof" in r for r in _reasons(in_use.text))
    iot.delete_security_profile(securityProfileName="rc-prof")
    assert post(client, token, "/console/custom-metrics/rc-temp/delete").status_code == 303
    assert post(client, token, "/console/custom-metrics/rc-temp/rename").status_code == 404


def test_refused_dimension_forms_come_back_as_typed(service):
    client, token = logged_in(service)
    iot = service.client()
    invalid = post(client, token, "/console/dimensions", name="rd-topics", stringValues="telemetry/#\na/#/b")
    assert invalid.status_code == 400 and any(r.startswith("InvalidRequestException: ") for r in _reasons(invalid.text))
    assert _field(invalid.text, "dimension-form", "name") == "rd-topics"
    assert _textarea(invalid.text, 'id="dimension-form"', "stringValues") == "telemetry/#\na/#/b"
    assert "rd-topics" not in iot.list_dimensions()["dimensionNames"]

    many = "\n".join(f"site/{i}/#" for i in range(101))  # AWS takes 100 at most
    too_many = post(client, token, "/console/dimensions", name="rd-many", stringValues=many)
    assert too_many.status_code == 400 and _textarea(too_many.text, 'id="dimension-form"', "stringValues") == many

    iot.create_dimension(name="rd-cmds", type="TOPIC_FILTER", stringValues=["commands/+"],
                         clientRequestToken="rd-cmds-token")
    duplicate = post(client, token, "/console/dimensions", name="rd-cmds", stringValues="other/#")
    assert duplicate.status_code == 409 and _field(duplicate.text, "dimension-form", "name") == "rd-cmds"
    assert _textarea(duplicate.text, 'id="dimension-form"', "stringValues") == "other/#"

    # Its topic filters, edited in place: a refused edit comes back in its row as typed.
    assert post(client, token, "/console/dimensions/rd-cmds/update", stringValues="commands/+\nconfig/#"
                ).status_code == 303
    assert iot.describe_dimension(name="rd-cmds")["stringValues"] == ["commands/+", "config/#"]
    refused = post(client, token, "/console/dimensions/rd-cmds/update", stringValues="commands/+\nx/#/y")
    assert refused.status_code == 400 and any("x/#/y" in r for r in _reasons(refused.text))
    assert _textarea(refused.text, 'data-dimension="rd-cmds"', "stringValues") == "commands/+\nx/#/y"
    assert iot.describe_dimension(name="rd-cmds")["stringValues"] == ["commands/+", "config/#"]

    iot.create_security_profile(securityProfileName="rd-prof", additionalMetricsToRetainV2=[
        {"metric": "aws:num-messages-sent", "metricDimension": {"dimensionName": "rd-cmds"}}])
    in_use = post(client, token, "/console/dimensions/rd-cmds/delete")
    assert in_use.status_code == 400 and any("used by security profile rd-prof" in r for r in _reasons(in_use.text))
    assert 'id="dimensions"' in in_use.text
    iot.delete_security_profile(securityProfileName="rd-prof")
    assert post(client, token, "/console/dimensions/rd-cmds/delete").status_code == 303


def test_refused_profile_detail_tags_and_verification_forms_come_back_as_typed(service):
    client, token = logged_in(service)
    iot = service.client()
    iot.create_security_profile(securityProfileName="rp-prof", behaviors=[FEW_PORTS])
    iot.create_thing_group(thingGroupName="rp-group")

    retained = post(client, token, "/console/profiles/rp-prof/retained", retained="aws:all-bytes-out\naws:nope",
                    version="1")
    assert retained.status_code == 400 and "<h1>Security profile rp-prof</h1>" in retained.text
    assert _textarea(retained.text, 'id="retained-form"', "retained") == "aws:all-bytes-out\naws:nope"
    assert any(r.startswith("InvalidRequestException: ") for r in _reasons(retained.text))

    for page, arn in (("/console/profiles/rp-prof/detail", f"{ARN}:securityprofile/rp-prof"),
                      ("/console/thing-groups/rp-group", f"{ARN}:thinggroup/rp-group")):
        refused = post(client, token, "/console/tags", resourceArn=arn, next=page, key="team", value="v" * 257)
        assert refused.status_code == 400 and any(r.startswith("InvalidRequestException: ")
                                                  for r in _reasons(refused.text)), page
        assert 'class="tags"' in refused.text and ("<h1>Security profile rp-prof</h1>" in refused.text
                                                   or "<h1>Thing group rp-group</h1>" in refused.text)
        assert _field(refused.text, 'class="filters add-tag"', "key") == "team"
        assert _field(refused.text, 'class="filters add-tag"', "value") == "v" * 257

    back = "/console/violations?view=active&profile=rp-prof"
    bulk = post(client, token, "/console/violations/verification", state="MAYBE", description="a <burst>",
                next=back)
    assert bulk.status_code == 400 and 'id="violations-table"' in bulk.text
    assert any("choose at least one violation" in r for r in _reasons(bulk.text))
    assert _selected(bulk.text, 'id="bulk-verify"', "state") == ["MAYBE"]
    assert _field(bulk.text, "bulk-verify", "description") == "a <burst>"
    assert f'name="next" value="{html.escape(back)}"' in bulk.text  # still the list as it was filtered
    one = post(client, token, "/console/violations/gone/verification", state="TRUE_POSITIVE", next=back)
    assert one.status_code == 400 and 'id="violations-table"' in one.text
    assert any("Violation gone does not exist" in r for r in _reasons(one.text))


def test_every_member_of_a_large_thing_group_is_reached_page_by_page(service):
    """The group page showed the first 250 members and no way to the others."""
    client, _ = logged_in(service)
    iot = service.client()
    iot.create_thing_group(thingGroupName="pg-big")
    names = sorted(f"pg-dev-{i:03d}" for i in range(263))
    for name in names:
        iot.create_thing(thingName=name)
        iot.add_thing_to_thing_group(thingGroupName="pg-big", thingName=name)

    def members(page: str) -> list[str]:
        return re.findall(r'<a href="/console/things/(pg-dev-\d+)">', page)

    first = client.get("/console/thing-groups/pg-big").text
    assert "Members (263)" in first and len(members(first)) == 250 and 'rel="prev"' not in first
    following = re.search(r'href="(\?after=[^"]+)" rel="next"', first).group(1)
    second = client.get(f"/console/thing-groups/pg-big{html.unescape(following)}").text
    assert members(first) + members(second) == names and 'rel="next"' not in second
    back = re.search(r'href="(\?before=[^"]+)" rel="prev"', second).group(1)
    again = client.get(f"/console/thing-groups/pg-big{html.unescape(back)}").text
    assert members(again) == names[:250]  # the 250 before the second page's first member
    assert client.get("/console/thing-groups/pg-big?after=no%20such!").status_code == 400


def test_a_profile_created_whose_target_is_refused_comes_back_as_its_edit_form(service):
    """The profile is created, then attaching a target is refused: the form used to come back as a
    create form, and sending it again was ResourceAlreadyExistsException. It comes back as the new
    profile's edit form (its version, its URL), so sending it again saves."""
    client, token = logged_in(service)
    iot = service.client()
    missing = f"{ARN}:thinggroup/pt-no-such-group"
    refused = client.post("/console/profiles/new", data={
        "csrf": token, "name": "pt-made", "description": "typed", "behaviors": "[]", "targets": [missing]})
    assert refused.status_code == 404 and "ResourceNotFoundException" in refused.text  # the refusing call's status
    assert "The profile was created, but not every target was changed" in refused.text
    assert re.search(r'<legend>Targets</legend>.*?</fieldset>\s*<p class="error field" role="alert">The profile was '
                     r'created', refused.text, re.S)  # by the targets
    assert re.findall(r'value="([^"]*)" checked', refused.text) == [missing]  # as typed, though no choice
    assert 'action="/console/profiles/pt-made"' in refused.text and '<input type="hidden" name="version" value="1">' \
        in refused.text
    assert iot.describe_security_profile(securityProfileName="pt-made")["securityProfileDescription"] == "typed"
    saved = client.post("/console/profiles/pt-made", data={
        "csrf": token, "description": "typed again", "behaviors": "[]", "version": "1",
        "targets": [f"{ARN}:all/things"]}, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"].endswith("?saved=1")
    assert [t["arn"] for t in iot.list_targets_for_security_profile(
        securityProfileName="pt-made")["securityProfileTargets"]] == [f"{ARN}:all/things"]


@pytest.mark.parametrize("topic, role, missing", [("arn:aws:sns:us-east-1:123456789012:t", "", "Role ARN"),
                                                  ("", "arn:aws:iam::123456789012:role/r", "Topic ARN")])
def test_an_sns_target_with_one_arn_says_which_is_missing(service, topic, role, missing):
    """Saving a topic without a role showed AWS's length constraint on the empty member, quoted as
    "Value '0'": the form now says which ARN is missing, by the alert target's fields."""
    client, token = logged_in(service)
    refused = client.post("/console/profiles/new", data={
        "csrf": token, "name": "pt-half-target", "behaviors": "[]", "alert_topic": topic, "alert_role": role})
    text = html.unescape(refused.text)
    assert refused.status_code == 400 and "An SNS alert target needs both ARNs" in text and f"Fill in {missing}" in text
    assert "Value '0'" not in text and f'value="{topic}"' in text and f'value="{role}"' in text
    assert re.search(r'<legend>SNS alert target.*?</fieldset>\s*<p class="error field" role="alert">An SNS alert',
                     text, re.S)  # by the alert target's fields
    with pytest.raises(Exception, match="ResourceNotFoundException"):
        service.client().describe_security_profile(securityProfileName="pt-half-target")


def test_a_refused_profile_update_comes_back_as_typed_with_the_reason_by_its_field(service):
    """A refused edit of a profile shows the form as it was typed (behaviors, description, targets,
    alert target), the same version, and AWS's reason by the field it concerns: an invalid behavior
    by the behaviors, a stale version above the form."""
    client, token = logged_in(service)
    iot = service.client()
    iot.create_security_profile(securityProfileName="pu-prof", behaviors=[FEW_PORTS])
    topic, role = "arn:aws:sns:us-east-1:123456789012:pu-topic", "arn:aws:iam::123456789012:role/pu-role"
    typed = '[{"name": "pu-typed", "metric": "aws:num-listening-tcp-ports", "criteria": {"value": {"count": 2}}}]'
    refused = client.post("/console/profiles/pu-prof", data={
        "csrf": token, "version": "1", "description": "typed words", "behaviors": typed,
        "targets": [f"{ARN}:all/registered-things"], "alert_topic": topic, "alert_role": role})
    assert refused.status_code == 400
    page = refused.text
    assert _textarea(page, 'id="profile-form"', "behaviors") == typed
    assert _field(page, "profile-form", "description") == "typed words"
    assert _field(page, "profile-form", "alert_topic") == topic and _field(page, "profile-form", "alert_role") == role
    assert re.findall(r'value="([^"]*)" checked', page) == [f"{ARN}:all/registered-things"]
    assert '<input type="hidden" name="version" value="1">' in page
    by_behaviors = re.search(r'</textarea></label>\s*</div>\s*<p class="error field" role="alert">(.*?)</p>', page, re.S)
    assert by_behaviors and html.unescape(by_behaviors.group(1)).startswith("InvalidRequestException: ")
    assert iot.describe_security_profile(securityProfileName="pu-prof")["behaviors"] == [FEW_PORTS]

    stale = client.post("/console/profiles/pu-prof", data={
        "csrf": token, "version": "7", "description": "stale words", "behaviors": "[]"})
    assert stale.status_code == 409 and _field(stale.text, "profile-form", "description") == "stale words"
    above = re.search(r'<p class="error" role="alert">(.*?)</p>\s*<form method="post" class="profile"', stale.text, re.S)
    assert above and above.group(1).startswith("VersionConflictException: ")


def test_a_refused_name_on_the_edit_form_is_shown_above_it(service):
    """The edit form has no name field: a refusal of the name (here too long for a profile) was
    placed by that field and so shown nowhere; it shows above the form."""
    client, token = logged_in(service)
    refused = client.post("/console/profiles/" + "n" * 200, data={"csrf": token, "description": "kept",
                                                                   "behaviors": "[]"})
    assert refused.status_code == 400 and _field(refused.text, "profile-form", "description") == "kept"
    assert any("securityProfileName" in r for r in _reasons(refused.text)), _reasons(refused.text)


def _metrics_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="metrics-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def test_fleet_metrics_show_each_devices_latest_value_of_a_group(service):
    """The distribution is of each device's latest value (not its highest, not its first), only
    the group's devices count, and the charts of the highest devices hold their datapoints in
    time order; the answer stays the same once the history is compacted and folded."""
    client, _ = logged_in(service)
    iot = service.client()
    iot.create_thing_group(thingGroupName="fm-group")
    iot.create_security_profile(securityProfileName="fm-prof", behaviors=[dict(FEW_PORTS, criteria={
        "comparisonOperator": "less-than-equals", "value": {"count": 1000}})])
    iot.attach_security_profile(securityProfileName="fm-prof", securityProfileTargetArn=f"{ARN}:thinggroup/fm-group")
    for i in range(4):
        iot.create_thing(thingName=f"fm-dev-{i}")
        iot.add_thing_to_thing_group(thingGroupName="fm-group", thingName=f"fm-dev-{i}")
    iot.create_thing_group(thingGroupName="fm-other")  # a device of another group reports too
    iot.create_thing(thingName="fm-outside")
    iot.add_thing_to_thing_group(thingGroupName="fm-other", thingName="fm-outside")
    iot.attach_security_profile(securityProfileName="fm-prof", securityProfileTargetArn=f"{ARN}:thinggroup/fm-other")
    sent: dict[str, list[int]] = {}
    for name in [f"fm-dev-{i}" for i in range(4)] + ["fm-outside"]:
        device = Device(service.mqtt_port, name)
        counts = sent[name] = [9, 6, 1 + int(name[-1]) if name[-1].isdigit() else 50]
        for k, count in enumerate(counts, 1):
            assert device.report(report(k, list(range(1, count + 1))))[0] == "json/accepted"
        device.close()
    path = "/console/metrics?metric=aws:num-listening-tcp-ports&range=1h&group=fm-group"

    def shown() -> dict:
        data = _metrics_data(client.get(path).text)
        return data if data["distribution"] and data["distribution"]["devices"] == 4 else {}

    data = wait_for(shown)
    assert data, "the group's four devices never showed"
    distribution = data["distribution"]
    assert [(e["thingName"], e["value"]) for e in distribution["highest"]] == [
        ("fm-dev-3", 4.0), ("fm-dev-2", 3.0), ("fm-dev-1", 2.0), ("fm-dev-0", 1.0)]
    assert set(data["series"]) == {"fm-dev-3", "fm-dev-2", "fm-dev-1"}
    for name, points in data["series"].items():
        assert [value for _, value in points] == sent[name]
        assert [t for t, _ in points] == sorted(t for t, _ in points)
    time.sleep(3)  # history compaction and the latest values' fold run every second at this scale
    again = _metrics_data(client.get(path).text)
    assert again["distribution"] == distribution and again["series"] == data["series"]
    whole = _metrics_data(client.get("/console/metrics?metric=aws:num-listening-tcp-ports&range=1h").text)
    assert {"fm-outside": 50.0}.items() <= {e["thingName"]: e["value"] for e in whole["distribution"]["highest"]}.items()


def test_saving_retained_metrics_keeps_their_operators_and_export_and_the_page_shows_the_export(service):
    """The retained-metrics form writes each item's dimension operator and ``export`` back; before,
    saving it made a NOT_IN dimension IN and stopped every retained metric's export."""
    client, token = logged_in(service)
    iot = service.client()
    iot.create_dimension(name="pd-topics", type="TOPIC_FILTER", stringValues=["sensors/#"])
    retained = [{"metric": "aws:num-messages-sent", "metricDimension": {"dimensionName": "pd-topics",
                                                                        "operator": "NOT_IN"}, "exportMetric": True},
                {"metric": "aws:all-bytes-out"}]
    iot.create_security_profile(securityProfileName="pd-export", behaviors=[{**FEW_PORTS, "exportMetric": True}],
                                additionalMetricsToRetainV2=retained,
                                metricsExportConfig={"mqttTopic": "export/pd", "roleArn": f"{ARN}:role/export"})
    page = html.unescape(client.get("/console/profiles/pd-export/detail").text)
    assert "aws:num-messages-sent pd-topics NOT_IN export\naws:all-bytes-out</textarea>" in page
    assert re.search(r'id="metrics-export">Metrics export: aws:num-listening-tcp-ports, aws:num-messages-sent to '
                     r'MQTT topic <code>export/pd</code>', page), page
    saved = post(client, token, "/console/profiles/pd-export/retained", version="1",
                 retained="aws:num-messages-sent pd-topics NOT_IN export\naws:all-bytes-out")
    assert saved.status_code == 303, saved.text
    assert iot.describe_security_profile(securityProfileName="pd-export")["additionalMetricsToRetainV2"] == retained
    iot.update_security_profile(securityProfileName="pd-export", deleteMetricsExportConfig=True)
    page = html.unescape(client.get("/console/profiles/pd-export/detail").text)
    assert 'class="error" id="metrics-export">aws:num-listening-tcp-ports, aws:num-messages-sent marked for export, ' \
           "but the profile has no metrics export topic" in page
