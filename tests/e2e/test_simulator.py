"""`iotdefender simulate` against a live service: reports accepted, an anomaly raises a violation."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time

from tests.support.processes import ServiceProcess


def test_simulated_fleet_with_an_anomaly(tmp_path):
    svc = ServiceProcess(data_dir=tmp_path, extra_args=["--report-min-interval", "0.5", "--metrics-window", "1"])
    svc.start()
    try:
        iot = svc.client()
        for name, kind in (("cpu_usage", "number"), ("temperature", "number"), ("firmware", "string-list")):
            iot.create_custom_metric(metricName=name, metricType=kind)
        iot.create_security_profile(securityProfileName="sim", behaviors=[
            {"name": "ports", "metric": "aws:listening-tcp-ports",
             "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 443, 8883]}}}],
            additionalMetricsToRetainV2=[{"metric": "aws:num-connection-attempts"}])
        iot.attach_security_profile(securityProfileName="sim",
                                    securityProfileTargetArn="arn:aws:iot:us-east-1:123456789012:all/things")
        # The three runs together (each lasts seconds of simulated reporting): JSON, CBOR with short
        # keys, and one that registers its things through the API with a reconnect loop the broker
        # sees (cloud-side metrics).
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDIOTDEFENDERTEST1",
               "AWS_SECRET_ACCESS_KEY": "test-secret-key-0123456789abcdefghijklmn"}
        formats = ([], ["--format", "cbor", "--short-keys"])
        runs = [subprocess.Popen(
            [sys.executable, "-m", "iotdefender", "simulate", "--mqtt-url", f"mqtt://127.0.0.1:{svc.mqtt_port}",
             "--devices", "4", "--interval", "1", "--duration", "5", "--prefix", f"sim{len(extra)}-",
             "--anomaly", f"new-port:sim{len(extra)}-0002", "--anomaly-start", "0", "--anomaly-stop", "60",
             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for extra in formats]
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "iotdefender", "simulate", "--mqtt-url", f"mqtt://127.0.0.1:{svc.mqtt_port}",
             "--devices", "2", "--interval", "1", "--duration", "4", "--prefix", "reg-",
             "--register-endpoint", svc.endpoint, "--anomaly", "reconnect-loop:reg-0001",
             "--anomaly-start", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        outputs = [run.communicate(timeout=120) for run in runs]
        for run, (_, stderr) in zip(runs, outputs):
            assert run.returncode == 0, stderr
        active = {(v["thingName"], v["behavior"]["name"]) for v in iot.list_active_violations()["activeViolations"]}
        for extra, (stdout, _) in zip(formats, outputs):
            summary = json.loads(stdout.strip().splitlines()[-1])
            assert summary["reports_sent"] >= 12 and summary["accepted"] == summary["reports_sent"], summary
            assert summary["rejected"] == {} and summary["unanswered"] == 0
            assert (f"sim{len(extra)}-0002", "ports") in active
            assert (f"sim{len(extra)}-0001", "ports") not in active
        things = {t["thingName"] for t in iot.list_things(attributeName="simulated", attributeValue="true")["things"]}
        assert things == {"reg-0000", "reg-0001"}
        time.sleep(2.5)  # the last windows close

        def attempts(thing: str) -> int:
            now = dt.datetime.now(dt.timezone.utc)
            datums = iot.list_metric_values(thingName=thing, metricName="aws:num-connection-attempts",
                                            startTime=now - dt.timedelta(minutes=5), endTime=now)["metricDatumList"]
            return sum(d["value"]["count"] for d in datums)

        assert attempts("reg-0000") == 1 and attempts("reg-0001") >= 4
        bad = subprocess.run([sys.executable, "-m", "iotdefender", "simulate", "--anomaly", "explode:x"],
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "KIND:THING" in bad.stderr
    finally:
        svc.stop()


def test_demo_keeps_running_for_the_console_until_ctrl_c(tmp_path):
    """`make demo` used to stop the service and then print a command that could not connect; and
    with `make run` up on its ports it wiped demo-data and crashed with a traceback."""
    import os
    import re
    import signal
    import socket

    import httpx

    from tests.support.processes import free_port

    api_port, mqtt_port = free_port(), free_port()
    data_dir = tmp_path / "demo-data"
    with socket.socket() as busy:  # another service on the API port
        busy.bind(("127.0.0.1", api_port))
        busy.listen()
        data_dir.mkdir()
        (data_dir / "keep").write_text("mine")
        refused = subprocess.run([sys.executable, "-m", "iotdefender", "demo", "--data-dir", str(data_dir),
                                  "--api-port", str(api_port), "--mqtt-port", str(mqtt_port)],
                                 capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and f"port {api_port}" in refused.stdout and "Traceback" not in refused.stderr
    assert (data_dir / "keep").read_text() == "mine"  # nothing wiped

    demo = subprocess.Popen([sys.executable, "-m", "iotdefender", "demo", "--data-dir", str(data_dir),
                             "--api-port", str(api_port), "--mqtt-port", str(mqtt_port), "--duration", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lines = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            lines.append(line)
            if "AWS CLI:" in line or not line:
                break
        text = "".join(lines)
        assert "keeps running until Ctrl-C" in text, text
        key, secret = re.search(r"access key (\S+), secret (\S+)\)", text).groups()
        console = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
        login = console.post("/console/login", data={"access_key_id": key, "secret_access_key": secret})
        assert login.status_code == 303 and console.get("/console/").status_code == 200  # still serving
    finally:
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=30)
    assert demo.returncode == 0, err
    assert "Traceback" not in out + err
    assert os.path.exists(data_dir / "credentials")


def test_a_short_interval_is_kept_and_never_throttled(tmp_path):
    """The README's ML recipe reports every 0.1 s against a throttle of 300 s / 3600 = 0.083 s: the
    simulator sent every 0.5 s whatever the interval (a fixed sleep), and a device that woke late
    sent a catch-up report at once (the schedule counted from the plan, not from the last report)."""
    svc = ServiceProcess(data_dir=tmp_path, extra_args=["--time-scale", "3600"])  # throttle 0.083 s
    svc.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "iotdefender", "simulate", "--mqtt-url", f"mqtt://127.0.0.1:{svc.mqtt_port}",
             "--devices", "3", "--interval", "0.1", "--duration", "4", "--no-custom-metrics", "--prefix", "fast-"],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        # 3 devices x (4 s minus a start offset of up to 0.1 s) / 0.1 s, less what a busy machine delays.
        assert summary["reports_sent"] >= 3 * 25, summary
        assert summary["rejected"] == {} and summary["accepted"] == summary["reports_sent"], summary
    finally:
        svc.stop()
