"""The README's path for a new user: generated credentials, then the AWS CLI against the service."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.processes import ServiceProcess

AWS = str(Path(sys.executable).with_name("aws"))


def aws(service: ServiceProcess, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(service.data_dir / "credentials"), AWS_DEFAULT_REGION="us-east-1")
    result = subprocess.run([AWS, "iot", *args, "--endpoint-url", service.endpoint, "--output", "json"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else {}


def test_readme_walkthrough_with_generated_credentials():
    service = ServiceProcess(data_dir=Path(tempfile.mkdtemp()), env={})
    service.start()
    try:
        credentials = (service.data_dir / "credentials").read_text()
        assert "aws_access_key_id" in credentials and "aws_secret_access_key" in credentials
        assert (service.data_dir / "credentials").stat().st_mode & 0o077 == 0

        created = aws(service, "create-security-profile", "--security-profile-name", "PortsProfile",
                      "--behaviors", readme_behaviors("PortsProfile"))
        assert created["securityProfileArn"] == "arn:aws:iot:us-east-1:123456789012:securityprofile/PortsProfile"
        listed = aws(service, "list-security-profiles")
        assert listed["securityProfileIdentifiers"] == [{"name": "PortsProfile", "arn": created["securityProfileArn"]}]
        aws(service, "attach-security-profile", "--security-profile-name", "PortsProfile",
            "--security-profile-target-arn", "arn:aws:iot:us-east-1:123456789012:all/things")
        targets = aws(service, "list-targets-for-security-profile", "--security-profile-name", "PortsProfile")
        assert targets["securityProfileTargets"] == [{"arn": "arn:aws:iot:us-east-1:123456789012:all/things"}]

        # The CLI reports AWS's error names, e.g. for a profile that does not exist.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_SHARED_CREDENTIALS_FILE=str(service.data_dir / "credentials"), AWS_DEFAULT_REGION="us-east-1")
        missing = subprocess.run([AWS, "iot", "describe-security-profile", "--security-profile-name", "nope",
                                  "--endpoint-url", service.endpoint], env=env, capture_output=True, text=True)
        assert missing.returncode != 0 and "ResourceNotFoundException" in missing.stderr

        # The key pair is made once: a restart keeps it, so scripts keep working.
        service.restart()
        assert (service.data_dir / "credentials").read_text() == credentials
        assert aws(service, "describe-security-profile", "--security-profile-name", "PortsProfile")["version"] == 1
    finally:
        service.stop()


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_behaviors(profile: str) -> str:
    """The ``--behaviors`` JSON of the README's ``create-security-profile`` for ``profile``."""
    found = re.search(r"create-security-profile --security-profile-name " + profile + r" \\\s*--behaviors '([^']*)'",
                      README.read_text())
    assert found, f"the README creates no {profile}"
    return " ".join(found.group(1).split())


def test_readme_profile_with_the_readme_fleet_shows_only_the_anomaly(tmp_path):
    """The README's PortsProfile on the README's simulated fleet: only the new-port device alarms. With
    the ports {443, 8883} it once allowed, every device (listening on 22 too) was in alarm at its first report."""
    service = ServiceProcess(data_dir=tmp_path, env={}, extra_args=["--report-min-interval", "0.5"])
    service.start()
    try:
        aws(service, "create-security-profile", "--security-profile-name", "PortsProfile",
            "--behaviors", readme_behaviors("PortsProfile"))
        aws(service, "attach-security-profile", "--security-profile-name", "PortsProfile",
            "--security-profile-target-arn", "arn:aws:iot:us-east-1:123456789012:all/things")
        run = subprocess.run(
            [sys.executable, "-m", "iotdefender", "simulate", "--mqtt-url", f"mqtt://127.0.0.1:{service.mqtt_port}",
             "--devices", "5", "--interval", "1", "--duration", "4", "--no-custom-metrics",
             "--anomaly", "new-port:device-0003", "--anomaly-start", "0"],
            capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        assert summary["reports_sent"] >= 15 and summary["accepted"] == summary["reports_sent"], summary
        active = aws(service, "list-active-violations")["activeViolations"]
        assert {(v["thingName"], v["behavior"]["name"]) for v in active} == {("device-0003", "ListeningPorts")}
        assert active[0]["lastViolationValue"]["ports"] == [22, 443, 4444, 8883]
    finally:
        service.stop()
