"""The README's path for a new user: generated credentials, then the AWS CLI against the service."""

from __future__ import annotations

import json
import os
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
                      "--behaviors", json.dumps([{"name": "ListeningPorts", "metric": "aws:listening-tcp-ports",
                                                  "criteria": {"comparisonOperator": "in-port-set",
                                                               "value": {"ports": [443]}}}]))
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
