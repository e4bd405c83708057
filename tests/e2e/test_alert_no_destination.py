"""A service started without any alert destination (no --sns-endpoint-url, no
--alert-subscriptions) and a profile whose alerts go to an SNS topic: the API answers as AWS does
(any SNS ARN is accepted), and the operator sees that the topic goes nowhere everywhere they look:
the log (at the profile's write, at start, and once when its first alert is dropped), the dead
letters, /metrics and the console's profile page."""

from __future__ import annotations

import html
import json
import time


from tests.e2e.test_console_http import logged_in
from tests.e2e.test_detection_targets import alerting_profile, dead_letters
from tests.support.mqtt import Device, report
from tests.support.processes import ServiceProcess
from tests.support import plain_http

NOWHERE = "arn:aws:sns:us-east-1:123456789012:nowhere"


def log_events(svc: ServiceProcess, name: str) -> list[dict]:
    out = []
    for line in svc.log_path.read_text().splitlines():
        if line.startswith("{") and f'"event": "{name}"' in line:
            out.append(json.loads(line))
    return out


def test_alerts_to_a_topic_without_destination_are_visible(tmp_path):
    svc = ServiceProcess(data_dir=tmp_path / "data", extra_args=["--report-min-interval", "0", "--log-format", "json"])
    svc.start()
    try:
        alerting_profile(svc.client(), NOWHERE)
        written = log_events(svc, "alert_target_unreached")
        assert len(written) == 1 and written[0]["topic"] == NOWHERE and written[0]["profile"] == "p"
        assert "--sns-endpoint-url" in written[0]["reason"] and "docs/alerts.md" in written[0]["reason"]

        for n, thing in enumerate(["cam-1", "cam-2", "cam-3"]):  # three in-alarm events, one topic
            device = Device(svc.mqtt_port, thing)
            assert device.report(report(n + 1, [22]))[0] == "json/accepted"
            device.close()
        deadline, letters = time.monotonic() + 20, []
        while time.monotonic() < deadline and len(letters) < 3:
            time.sleep(0.2)
            letters = dead_letters(svc)
        assert len(letters) == 3
        assert {json.loads(letter["message"])["thingName"] for letter in letters} == {"cam-1", "cam-2", "cam-3"}
        assert all(letter["target_arn"] == NOWHERE and "no destination" in letter["last_error"] for letter in letters)
        metrics = plain_http.get(svc.endpoint + "/metrics").text
        assert 'iotdefender_alert_deliveries_total{kind="sns",outcome="no_destination"} 3.0' in metrics
        dropped = log_events(svc, "alert_undeliverable")
        assert len(dropped) == 1 and dropped[0]["topic"] == NOWHERE and dropped[0]["level"] == "warning"

        client, _ = logged_in(svc)
        page = html.unescape(client.get("/console/profiles/p/detail").text)
        assert f"SNS topic {NOWHERE} has no destination" in page and "--alert-subscriptions" in page

        svc.restart()  # at start: the stored profiles' topics that go nowhere, one line each
        started = log_events(svc, "alert_target_unreached")
        assert len(started) == 2 and started[1]["topic"] == NOWHERE and started[1]["profiles"] == ["p"]
    finally:
        svc.stop()
