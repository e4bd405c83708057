"""Detection across target kinds, silence, pagination and alert delivery failures."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.mqtt import Device, report
from tests.support.processes import ACCESS_KEY, REGION, SECRET_KEY, ServiceProcess, wait_for
from tests.support.webhook import WebhookReceiver
from tests.support import plain_http

ARN = "arn:aws:iot:us-east-1:123456789012:"
PORTS = {"name": "ports", "metric": "aws:listening-tcp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]}}}


def violating_things(iot) -> set[str]:
    pages = iot.get_paginator("list_active_violations").paginate()
    return {v["thingName"] for page in pages for v in page["activeViolations"]}


def watch_every_thing(iot, profile: str) -> None:  # type: ignore[no-untyped-def]
    """A profile of the one ports behavior, on all things."""
    iot.create_security_profile(securityProfileName=profile, behaviors=[PORTS])
    iot.attach_security_profile(securityProfileName=profile, securityProfileTargetArn=ARN + "all/things")


def events_once_no_alarm_is_left(iot, **selection: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """The violation events ``selection`` picks, once no violation is active (15 s at most)."""
    deadline = time.time() + 15
    while time.time() < deadline and iot.list_active_violations()["activeViolations"]:
        time.sleep(0.2)
    assert iot.list_active_violations()["activeViolations"] == []
    now = dt.datetime.now(dt.timezone.utc)
    return iot.list_violation_events(startTime=now - dt.timedelta(hours=1), endTime=now + dt.timedelta(minutes=1),
                                     **selection)["violationEvents"]


def report_ports(svc: ServiceProcess, things: list[str], *listening: list[int]) -> None:
    """Each thing reports each list of listening ports in turn (report ids 1, 2, ...), accepted."""
    for thing in things:
        dev = Device(svc.mqtt_port, thing)
        for number, ports in enumerate(listening, 1):
            assert dev.report(report(number, ports))[0] == "json/accepted"
        dev.close()


@pytest.fixture
def quick(tmp_path):
    """A service whose alarms are invalidated after 6 s of silence."""
    svc = ServiceProcess(data_dir=tmp_path, extra_args=["--report-min-interval", "0", "--invalidation-period", "6"])
    svc.start()
    yield svc, svc.client()
    svc.stop()


def test_every_target_kind_monitors_the_right_things(quick):
    svc, iot = quick
    iot.create_thing_group(thingGroupName="plant")
    iot.create_thing_group(thingGroupName="line-1", parentGroupName="plant")
    for name in ("in-child-group", "registered-elsewhere"):
        iot.create_thing(thingName=name)
    iot.add_thing_to_thing_group(thingGroupName="line-1", thingName="in-child-group")
    profiles = {"on-parent-group": ARN + "thinggroup/plant", "on-registered": ARN + "all/registered-things",
                "on-unregistered": ARN + "all/unregistered-things"}
    for name, target in profiles.items():
        iot.create_security_profile(securityProfileName=name, behaviors=[PORTS])
        iot.attach_security_profile(securityProfileName=name, securityProfileTargetArn=target)
    for thing in ("in-child-group", "registered-elsewhere", "not-registered"):
        dev = Device(svc.mqtt_port, thing)
        assert dev.report(report(1, [22]))[0] == "json/accepted"
        dev.close()
    by_profile: dict[str, set[str]] = {}
    for v in iot.list_active_violations(maxResults=100)["activeViolations"]:
        by_profile.setdefault(v["securityProfileName"], set()).add(v["thingName"])
    assert by_profile == {"on-parent-group": {"in-child-group"},
                          "on-registered": {"in-child-group", "registered-elsewhere"},
                          "on-unregistered": {"not-registered"}}
    # A thing leaving the group leaves the profile: its violation is invalidated.
    iot.remove_thing_from_thing_group(thingGroupName="line-1", thingName="in-child-group")
    deadline = time.time() + 15
    while time.time() < deadline and any(
            v["securityProfileName"] == "on-parent-group" for v in iot.list_active_violations()["activeViolations"]):
        time.sleep(0.2)
    now = dt.datetime.now(dt.timezone.utc)
    events = iot.list_violation_events(securityProfileName="on-parent-group", startTime=now - dt.timedelta(hours=1),
                                       endTime=now)["violationEvents"]
    assert [e["violationEventType"] for e in events] == ["in-alarm", "alarm-invalidated"]


def test_a_thing_moved_out_of_a_profiles_group_by_update_thing_groups_for_thing_is_invalidated(quick):
    """Moving a thing to another group of the same hierarchy in one UpdateThingGroupsForThing call
    takes it out of the profile on the group it left: its violation is invalidated, and the profile
    on the group it joined judges its next report."""
    svc, iot = quick
    iot.create_thing_group(thingGroupName="site")
    for group in ("line-a", "line-b"):
        iot.create_thing_group(thingGroupName=group, parentGroupName="site")
        iot.create_security_profile(securityProfileName=f"on-{group}", behaviors=[PORTS])
        iot.attach_security_profile(securityProfileName=f"on-{group}", securityProfileTargetArn=ARN + f"thinggroup/{group}")
    iot.create_thing(thingName="mover")
    iot.update_thing_groups_for_thing(thingName="mover", thingGroupsToAdd=["line-a"])
    dev = Device(svc.mqtt_port, "mover")
    assert dev.report(report(1, [22]))[0] == "json/accepted"
    assert {v["securityProfileName"] for v in iot.list_active_violations()["activeViolations"]} == {"on-line-a"}
    iot.update_thing_groups_for_thing(thingName="mover", thingGroupsToRemove=["line-a"], thingGroupsToAdd=["line-b"])
    events = events_once_no_alarm_is_left(iot, securityProfileName="on-line-a")
    assert [e["violationEventType"] for e in events] == ["in-alarm", "alarm-invalidated"]
    assert dev.report(report(2, [22]))[0] == "json/accepted"
    assert {v["securityProfileName"] for v in iot.list_active_violations()["activeViolations"]} == {"on-line-b"}
    dev.close()


def test_every_event_and_datapoint_is_listed_from_its_own_answered_time(quick):
    """Times are answered in milliseconds and stored in microseconds: a poller resuming from an
    event's own ``violationEventTime`` (startTime = endTime = it) missed every event stored just
    below the millisecond it was answered as (35 of 60 in an outside-in test); the same for a
    datapoint's timestamp in ListMetricValues."""
    svc, iot = quick
    watch_every_thing(iot, "ports-only")
    things = [f"clock-{n}" for n in range(10)]
    report_ports(svc, things, [22], [443])
    now = dt.datetime.now(dt.timezone.utc)
    events = [e for page in iot.get_paginator("list_violation_events").paginate(
        startTime=now - dt.timedelta(hours=1), endTime=now + dt.timedelta(minutes=1)) for e in page["violationEvents"]]
    assert len(events) == 20
    missed = []
    for event in events:
        at = event["violationEventTime"]
        found = iot.list_violation_events(startTime=at, endTime=at, thingName=event["thingName"])["violationEvents"]
        if (event["violationId"], event["violationEventType"]) not in {
                (e["violationId"], e["violationEventType"]) for e in found}:
            missed.append(at.isoformat())
    assert missed == []
    for thing in things:
        values = iot.list_metric_values(thingName=thing, metricName="aws:listening-tcp-ports",
                                        startTime=now - dt.timedelta(hours=1), endTime=now)["metricDatumList"]
        assert len(values) == 2
        for value in values:
            at = value["timestamp"]
            again = iot.list_metric_values(thingName=thing, metricName="aws:listening-tcp-ports",
                                           startTime=at, endTime=at)["metricDatumList"]
            assert [v["value"] for v in again] == [value["value"]], (thing, at.isoformat())


@pytest.mark.parametrize("restart", [False, True])
def test_a_behavior_given_another_metric_under_its_name_ends_its_alarm(tmp_path, restart):
    """A behavior whose metric changes under the same name is another behavior: the alarm raised on
    the old metric is invalidated (with the behavior it was raised on), not cleared later by a
    datapoint of the new metric (an outside-in test: an alarm on listening ports "cleared" by a
    bytes count). After a restart the sweep reads the metric the alarm was raised on back. The
    invalidation period is AWS's (2 days): no silence ends the alarm meanwhile."""
    svc = ServiceProcess(data_dir=tmp_path, extra_args=["--report-min-interval", "0"])
    svc.start()
    try:
        _another_metric_under_the_same_name(svc, svc.client(), restart)
    finally:
        svc.stop()


def _another_metric_under_the_same_name(svc: ServiceProcess, iot, restart: bool) -> None:  # type: ignore[no-untyped-def]
    iot.create_security_profile(securityProfileName="renamed-metric", behaviors=[PORTS])
    iot.attach_security_profile(securityProfileName="renamed-metric", securityProfileTargetArn=ARN + "all/things")
    report_ports(svc, ["shifty"], [22])
    assert [v["behavior"]["metric"] for v in iot.list_active_violations()["activeViolations"]] == \
        ["aws:listening-tcp-ports"]
    if restart:
        svc.restart()
    iot.update_security_profile(securityProfileName="renamed-metric", behaviors=[
        {"name": "ports", "metric": "aws:all-bytes-out",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 1000}, "durationSeconds": 300}}])
    events = events_once_no_alarm_is_left(iot, thingName="shifty")
    assert [(e["violationEventType"], e["behavior"]["metric"]) for e in events] == [
        ("in-alarm", "aws:listening-tcp-ports"), ("alarm-invalidated", "aws:listening-tcp-ports")]


@pytest.mark.parametrize("detection_worker", ["on", "off"])
def test_a_detach_or_a_deleted_profile_invalidates_at_once(tmp_path, detection_worker):
    """At the default time scale the sweep runs once a minute: a detached profile's violations
    stayed active until then. The change wakes it; the service here is younger than a minute, so
    without that no sweep has run yet when the test looks."""
    svc = ServiceProcess(data_dir=tmp_path, extra_args=["--report-min-interval", "0",
                                                         "--detection-worker", detection_worker])
    svc.start()
    try:
        started, iot = time.monotonic(), svc.client()
        for name in ("detached", "deleted"):
            iot.create_security_profile(securityProfileName=name, behaviors=[PORTS])
            iot.attach_security_profile(securityProfileName=name, securityProfileTargetArn=ARN + "all/things")
        dev = Device(svc.mqtt_port, "now-1")
        assert dev.report(report(1, [22]))[0] == "json/accepted"
        dev.close()
        active = {v["securityProfileName"] for v in iot.list_active_violations()["activeViolations"]}
        assert active == {"detached", "deleted"}

        def invalidated_within(profile: str, seconds: float) -> list[str]:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and any(
                    v["securityProfileName"] == profile for v in iot.list_active_violations()["activeViolations"]):
                time.sleep(0.1)
            now = dt.datetime.now(dt.timezone.utc)
            return [e["violationEventType"] for e in iot.list_violation_events(
                securityProfileName=profile, startTime=now - dt.timedelta(hours=1), endTime=now)["violationEvents"]]

        iot.detach_security_profile(securityProfileName="detached", securityProfileTargetArn=ARN + "all/things")
        assert invalidated_within("detached", 3) == ["in-alarm", "alarm-invalidated"]
        iot.delete_security_profile(securityProfileName="deleted")
        assert invalidated_within("deleted", 3) == ["in-alarm", "alarm-invalidated"]
        assert time.monotonic() - started < 50  # before the first periodic sweep (60 s after start)
    finally:
        svc.stop()


def test_silent_device_is_invalidated_and_pagination_covers_all(quick):
    svc, iot = quick
    watch_every_thing(iot, "fleet")
    things = [f"quiet-{i}" for i in range(5)]
    report_ports(svc, things, [22])
    pages = list(iot.get_paginator("list_active_violations").paginate(PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3 and sorted(v["thingName"] for p in pages for v in p["activeViolations"]) == things
    deadline = time.time() + 30  # 6 s of silence, swept every 0.5 s
    while time.time() < deadline and violating_things(iot):
        time.sleep(0.2)
    assert violating_things(iot) == set()
    now = dt.datetime.now(dt.timezone.utc)
    events = [e for page in iot.get_paginator("list_violation_events").paginate(
        startTime=now - dt.timedelta(hours=1), endTime=now, PaginationConfig={"PageSize": 3})
        for e in page["violationEvents"]]
    assert sorted(e["violationEventType"] for e in events) == ["alarm-invalidated"] * 5 + ["in-alarm"] * 5
    for thing in things:
        kinds = [e["violationEventType"] for e in events if e["thingName"] == thing]
        assert kinds == ["in-alarm", "alarm-invalidated"]


ALERTS_TOPIC = "arn:aws:sns:us-east-1:123456789012:alerts"


def alerting_service(tmp_path, webhooks: list[str], *args: str) -> ServiceProcess:
    """A started service whose topic ALERTS_TOPIC goes to ``webhooks`` (secret "s")."""
    subscriptions = tmp_path / "subs.json"
    subscriptions.write_text(json.dumps({ALERTS_TOPIC: [{"webhook": url, "secret": "s"} for url in webhooks]}))
    svc = ServiceProcess(data_dir=tmp_path / "data", extra_args=[
        "--report-min-interval", "0", "--alert-subscriptions", str(subscriptions), *args])
    svc.start()
    return svc


def alerting_profile(iot, topic: str) -> None:  # type: ignore[no-untyped-def]
    """The profile "p" on every thing, alerting to ``topic``."""
    iot.create_security_profile(securityProfileName="p", behaviors=[PORTS], alertTargets={
        "SNS": {"alertTargetArn": topic, "roleArn": "arn:aws:iam::123456789012:role/r"}})
    iot.attach_security_profile(securityProfileName="p", securityProfileTargetArn=ARN + "all/things")


def dead_letters(svc: ServiceProcess) -> list[dict]:
    """``GET /_iotdefender/alerts/dead``, signed."""
    request = AWSRequest(method="GET", url=svc.endpoint + "/_iotdefender/alerts/dead")
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "iot", REGION).add_auth(request)
    answer = plain_http.get(request.url, headers=dict(request.headers))
    assert answer.status_code == 200, answer.text
    return answer.json()["deadLetters"]


def alarm_on_cam(svc: ServiceProcess) -> None:
    """A profile alerting to ALERTS_TOPIC on every thing, and the device "cam" in alarm on it."""
    alerting_profile(svc.client(), ALERTS_TOPIC)
    dev = Device(svc.mqtt_port, "cam")
    assert dev.report(report(1, [22]))[0] == "json/accepted"
    dev.close()


def test_an_alert_being_sent_when_the_service_is_killed_is_sent_again_at_restart(tmp_path):
    """kill -9 while a webhook is being sent: the row stayed claimed for 120 s, so the restarted
    service sent it only two minutes later. On one box the service's own claims are taken back at
    start: the alert arrives within seconds of the restart (a second time: at least once)."""
    slow = WebhookReceiver("s", delay_s=3.0)
    svc = alerting_service(tmp_path, [slow.url])
    try:
        alarm_on_cam(svc)
        slow.arrived.get(timeout=15)  # the send is under way; the receiver answers 3 s later
        svc.restart(hard=True)
        restarted = time.monotonic()
        first = slow.next(timeout=10)["message"]  # the killed attempt's request, which the receiver had
        again = slow.next(timeout=15)["message"]  # sent again by the restarted service
        assert time.monotonic() - restarted < 15
        assert first["violationId"] == again["violationId"] and again["violationEventType"] == "in-alarm"
        assert '"alerts_reclaimed"' in svc.log_path.read_text()
    finally:
        svc.stop()
        slow.close()


def test_failing_webhook_is_retried_then_dead_lettered(tmp_path):
    flaky, dead = WebhookReceiver("s", fail_first=2), "http://127.0.0.1:9/unreachable"
    svc = alerting_service(tmp_path, [flaky.url, dead], "--time-scale", "20")  # retries back off from 1 s / 20
    try:
        alarm_on_cam(svc)
        message = flaky.next(timeout=30)["message"]  # two 503s, then delivered
        assert message["violationEventType"] == "in-alarm" and message["thingName"] == "cam"
        # The receiver has the message before the service has its answer and counts the delivery.
        delivered = 'iotdefender_alert_deliveries_total{kind="webhook",outcome="delivered"} 1.0'
        wait_for(lambda: delivered in plain_http.get(svc.endpoint + "/metrics").text, 10, "the delivery counted")
        assert 'iotdefender_alert_deliveries_total{kind="webhook",outcome="retry"}' in plain_http.get(
            svc.endpoint + "/metrics").text
        # The unreachable hook: 8 attempts backing off 0.05 s .. 6.4 s, then a dead letter.
        deadline, letters = time.time() + 30, []
        while time.time() < deadline and not letters:
            time.sleep(0.5)
            letters = dead_letters(svc)
        assert len(letters) == 1 and letters[0]["destination"] == f"webhook:{dead}"
        assert letters[0]["attempts"] == 8 and json.loads(letters[0]["message"])["thingName"] == "cam"
        assert 'iotdefender_alert_deliveries_total{kind="webhook",outcome="dead"} 1.0' in plain_http.get(
            svc.endpoint + "/metrics").text
        log = svc.log_path.read_text()
        assert '"event": "alert_delivery_failed"' in log and "unreachable" in log
    finally:
        svc.stop()
        flaky.close()


def test_a_burst_of_alerts_is_delivered_whole(tmp_path):
    """30 devices violate at once: every alert reaches the webhook (rate-limited, not dropped)."""
    hook = WebhookReceiver("s")
    topic = "arn:aws:sns:us-east-1:123456789012:burst"
    subscriptions = tmp_path / "subs.json"
    subscriptions.write_text(json.dumps({topic: [{"webhook": hook.url, "secret": "s"}]}))
    svc = ServiceProcess(data_dir=tmp_path / "data", extra_args=["--report-min-interval", "0",
                                                                 "--alert-subscriptions", str(subscriptions)])
    svc.start()
    try:
        alerting_profile(svc.client(), topic)
        devices = [Device(svc.mqtt_port, f"burst-{i:02d}") for i in range(30)]
        for dev in devices:
            dev.publish(json.dumps(report(1, [22])).encode())
        assert all(dev.reply()[0] == "json/accepted" for dev in devices)
        things = sorted(hook.next(timeout=30)["message"]["thingName"] for _ in range(30))
        assert things == [f"burst-{i:02d}" for i in range(30)]
        for dev in devices:
            dev.close()
    finally:
        svc.stop()
        hook.close()
