"""``iotdefender demo``: the service, a sample profile and a fleet with misbehaving devices.

Starts ``iotdefender serve`` at time scale 30 (reports every 10 s, 10 s cloud-side windows) on
the default ports, creates a security profile through the AWS API, runs 20 simulated devices,
switches anomalies on for half a minute and prints every violation event as it is stored. One
behavior is ML Detect: its model learns the fleet's bytes out in the first 20 s (the training
period, shortened for the demo), the demo prints its training status as it climbs, and the
traffic burst later fires it. Then it
keeps the service running, with the console's address and login and an AWS CLI command that works,
until Ctrl-C (``--exit`` stops at once instead, for scripts).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import botocore.session
import httpx


from iotdefender.brokers.external import BrokerUrl
from iotdefender.net_address import check_port_free
from iotdefender.simulator.devices import parse_anomaly
from iotdefender.simulator.runner import Fleet, SimulationSettings

PROFILE = [
    {"name": "ListeningPorts", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 443, 8883]}}},
    {"name": "BackendOnly", "metric": "aws:destination-ip-addresses",
     "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.20.0.0/16"]}}},
    {"name": "BytesOut", "metric": "aws:all-bytes-out",
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 1_000_000}}},
    {"name": "Cpu", "metric": "cpu_usage", "criteria": {"comparisonOperator": "less-than", "value": {"number": 90}}},
    {"name": "MessagesSent", "metric": "aws:num-messages-sent",
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 100}}},
    {"name": "AuthorizationFailures", "metric": "aws:num-authorization-failures",
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 1}}},
    {"name": "BytesOutLearned", "metric": "aws:all-bytes-out",
     "criteria": {"mlDetectionConfig": {"confidenceLevel": "MEDIUM"}}},
]
# ML Detect in seconds: a 20 s training period on at least 30 datapoints, no rebuild during the demo
# (a model rebuilt over the anomalies would learn them).
ML_ARGS = ["--ml-training-period", "20", "--ml-min-datapoints", "30", "--ml-refresh-period", "3600"]
ANOMALY_START, ANOMALY_STOP = 30.0, 60.0
ANOMALIES = ["new-port:device-0003", "unknown-network:device-0007", "traffic-burst:device-0011",
             "message-flood:device-0015", "auth-storm:device-0018"]


def run_demo(data_dir: Path, api_port: int = 8080, mqtt_port: int = 1883, duration: float = 90.0,
             keep_running: bool = True) -> int:
    for port in (api_port, mqtt_port):  # before anything is wiped or started: `make run` may be up
        try:
            check_port_free("127.0.0.1", port)
        except OSError as error:
            print(f"iotdefender demo: {error} (is `make run` or another demo running? stop it first)")
            return 1
    shutil.rmtree(data_dir, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDEFENDER_")}
    serve = subprocess.Popen([sys.executable, "-m", "iotdefender", "serve", "--data-dir", str(data_dir),
                              "--api-port", str(api_port), "--mqtt-port", str(mqtt_port), "--time-scale", "30",
                              "--report-min-interval", "9", "--log-format", "json", *ML_ARGS], env=env, stdout=subprocess.DEVNULL,
                             stderr=open(data_dir.parent / f"{data_dir.name}.log", "wb"))
    endpoint = f"http://127.0.0.1:{api_port}"
    # One client for the polls: each httpx.get() builds an SSL context (certifi's CA bundle), ~50 ms
    # of CPU a poll while the service it waits for starts on the same cores.
    poller = httpx.Client(timeout=1)
    try:
        for _ in range(200):
            try:
                if poller.get(endpoint + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                if serve.poll() is not None:
                    print("iotdefender serve did not start; see", data_dir.parent / f"{data_dir.name}.log")
                    return 1
            time.sleep(0.1)
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str((data_dir / "credentials").resolve())
        session = botocore.session.Session()
        session.set_config_variable("profile", "default")
        # botocore builds the operations from the model at run time: no static type to check against.
        iot: Any = session.create_client("iot", region_name="us-east-1", endpoint_url=endpoint)
        for name, kind in (("cpu_usage", "number"), ("temperature", "number"), ("firmware", "string-list")):
            iot.create_custom_metric(metricName=name, metricType=kind)
        iot.create_security_profile(securityProfileName="demo-fleet", behaviors=PROFILE)
        iot.attach_security_profile(securityProfileName="demo-fleet",
                                    securityProfileTargetArn="arn:aws:iot:us-east-1:123456789012:all/things")
        print(f"iotdefender is running: API {endpoint}, MQTT 127.0.0.1:{mqtt_port}, time scale 30 "
              f"(reports every 10 s). Profile demo-fleet watches every device.")
        print(f"Anomalies from {ANOMALY_START:g} s to {ANOMALY_STOP:g} s: " + ", ".join(ANOMALIES))
        print("BytesOutLearned is ML Detect: it learns what normal bytes out are for 20 s, then alarms on what is not.")
        anomalies = [parse_anomaly(a, ANOMALY_START, ANOMALY_STOP) for a in ANOMALIES]
        fleet = Fleet(SimulationSettings(BrokerUrl("127.0.0.1", mqtt_port, False, None, None), devices=20,
                                         interval=10.0, duration=duration, anomalies=anomalies))
        start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)

        async def main() -> dict:
            seen: set[tuple[str, str]] = set()
            statuses: dict[str, tuple[str, float]] = {}

            async def watch() -> None:
                while True:
                    await asyncio.sleep(2)
                    summaries = await asyncio.to_thread(iot.get_behavior_model_training_summaries,
                                                        securityProfileName="demo-fleet")
                    for s in summaries["summaries"]:
                        status = (s["modelStatus"], s.get("datapointsCollectionPercentage", 0.0))
                        if statuses.get(s["behaviorName"]) != status:
                            statuses[s["behaviorName"]] = status
                            print(f"\n  ML model of {s['behaviorName']}: {status[0]}, "
                                  f"{status[1]:g} % of its training data collected")
                    events = await asyncio.to_thread(
                        iot.list_violation_events, startTime=start,
                        endTime=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1), maxResults=250)
                    for event in events["violationEvents"]:
                        key = (event["violationId"], event["violationEventType"])
                        if key not in seen:
                            seen.add(key)
                            print(f"\n  {event['violationEventType']:<17} {event['thingName']:<12} "
                                  f"{event['behavior']['name']:<22} value {event.get('metricValue')}"
                                  + (f" ({info['confidenceLevel']} confidence)"
                                     if (info := event.get("violationEventAdditionalInfo")) else ""))

            watcher = asyncio.create_task(watch())
            summary = await fleet.run()
            await asyncio.sleep(3)
            watcher.cancel()
            return summary

        summary = asyncio.run(main())
        active = iot.list_active_violations(maxResults=250)["activeViolations"]
        print(f"\nFleet: {summary}")
        print(f"Active violations now: {len(active)}.")
        if keep_running:
            _explore(data_dir, endpoint, serve, session.get_credentials())
        return 0
    except KeyboardInterrupt:
        print("\nStopping.")
        return 0
    finally:
        poller.close()
        serve.terminate()
        try:
            serve.wait(15)
        except subprocess.TimeoutExpired:
            serve.kill()


def _explore(data_dir: Path, endpoint: str, serve: subprocess.Popen[bytes], key: Any) -> None:
    """Leave the service up for the console and the AWS CLI until Ctrl-C (or until it stops); ``key``
    is botocore's view of the service's generated credentials file."""
    credentials = (data_dir / "credentials").resolve()
    print(f"\nThe service keeps running until Ctrl-C.\n"
          f"  Console:  {endpoint}/console/  (access key {key.access_key}, secret {key.secret_key})\n"
          f"  AWS CLI:  AWS_SHARED_CREDENTIALS_FILE={credentials} .venv/bin/aws iot list-active-violations "
          f"--endpoint-url {endpoint} --region us-east-1\n"
          f"  Log:      {data_dir.parent / (data_dir.name + '.log')}", flush=True)
    while serve.poll() is None:
        time.sleep(0.5)
    print(f"iotdefender serve stopped (exit code {serve.returncode})")
