"""A statistical threshold in cluster mode is the whole fleet's percentile, end to end: two
``serve`` nodes, each owning half the partitions, devices reporting over MQTT, the verdicts read
through boto3. Each node holds only its own partitions' devices, so a node that used only its own
would judge these probes the other way round."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.test_cluster_serve import node_id, owned_by, two_nodes
from tests.support.mqtt import Device, report

pytestmark = pytest.mark.postgres

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"
TIME_SCALE = 40.0
WINDOW_S = 300 / TIME_SCALE  # the behavior's durationSeconds, scaled: 7.5 s
CONNECTIONS = {"name": "connections", "metric": "aws:num-established-tcp-connections",
               "criteria": {"comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p50"},
                            "durationSeconds": 300}}


def connections(report_id: int, total: int) -> dict:
    return report(report_id, [], tcp_connections={"established_connections": {"connections": [], "total": total}})


def test_a_statistical_threshold_is_the_percentile_over_every_detect_nodes_devices(jetstream, postgres,
                                                                                    tmp_path: Path):
    url = postgres.create_database(f"clstat{time.time_ns()}")
    args = ["--cluster-url", jetstream.urls[0], "--report-min-interval", "0", "--time-scale", str(TIME_SCALE),
            "--metrics-window", "4"]
    with two_nodes(url, tmp_path, args) as (a, b):
        devices: list[Device] = []
        try:
            members = sorted([node_id(a), node_id(b)])
            iot = a.client()
            iot.create_security_profile(securityProfileName="fleet", behaviors=[CONNECTIONS])
            iot.attach_security_profile(securityProfileName="fleet", securityProfileTargetArn=ALL_THINGS)
            # Normal is at most the fleet's median of the window before. Five quiet devices whose
            # partitions node A owns, five busy ones of node B's: the fleet's median of 1, 1, 1, 1, 1,
            # 100, 100, 100, 100, 100 is 50.5 (node A's devices alone: 1, node B's: 100).
            quiet = owned_by(node_id(a), members, 5, "quiet")
            busy = owned_by(node_id(b), members, 5, "busy")
            probe_a = owned_by(node_id(a), members, 1, "probe-a")[0]
            probe_b = owned_by(node_id(b), members, 1, "probe-b")[0]
            for index, thing in enumerate([*quiet, *busy, probe_a, probe_b]):
                devices.append(Device((a if index % 2 else b).mqtt_port, thing))  # brokers of both nodes
            by_thing = {device.thing: device for device in devices}
            time.sleep(1.2)  # the profile reaches both detect nodes (within 1 s)

            for attempt in range(1, 100):  # the fleet's reports all within one window
                time.sleep(WINDOW_S - time.time() % WINDOW_S + 0.2)
                window = int(time.time() // WINDOW_S)
                for thing in [*quiet, *busy]:
                    total = 1 if thing in quiet else 100
                    assert by_thing[thing].report(connections(attempt, total))[0] == "json/accepted"
                if int(time.time() // WINDOW_S) == window:
                    break
                assert attempt < 3, "the fleet's reports never fitted in one window"
            # In the next window, once both nodes have shared the one that ended (each within ~1 s):
            time.sleep((window + 1) * WINDOW_S - time.time() + 2.5)
            assert by_thing[probe_a].report(connections(1, 20))[0] == "json/accepted"  # normal; over node A's 1
            assert by_thing[probe_b].report(connections(1, 60))[0] == "json/accepted"  # over 50.5; under node B's 100
            assert int(time.time() // WINDOW_S) == window + 1, "the probes came too late to test the window"

            def violating(thing: str) -> list[str]:
                return [v["behavior"]["name"] for v in iot.list_active_violations(thingName=thing)["activeViolations"]]

            assert violating(probe_a) == []
            assert violating(probe_b) == ["connections"]
            (active,) = b.client().list_active_violations(thingName=probe_b)["activeViolations"]
            assert active["lastViolationValue"] == {"count": 60}
        finally:
            for device in devices:
                device.close()
