"""ML Detect on ``aws:message-byte-size`` end to end, driven only by boto3 and real MQTT clients, at
a high time scale. Each cloud-side window's datapoint is its largest message, and a window without
messages has none (docs/cloud-metrics.md): the model learns the sizes the devices send, not the 0s
of their idle windows, and an idle window neither alarms nor clears. A device that suddenly sends
much larger messages gets an in-alarm event with a confidence level, cleared when its messages are
of their usual size again."""

from __future__ import annotations

import time

import pytest

from tests.e2e.test_cloud_metrics import client
from tests.e2e.test_ml_detect import events, service_with
from tests.support.mqtt import stop_network_loop
from tests.support.processes import ServiceProcess
from tests.support.signing import send_signed

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"
WINDOW = 0.25  # cloud-side windows: 24 per training period
# An hour lasts 0.1 s, the training period 6 s (2.5 days), no refresh during the test.
ARGS = ["--time-scale", "36000", "--metrics-window", str(WINDOW), "--ml-training-period", "6",
        "--ml-min-datapoints", "40", "--ml-refresh-period", "60", "--ml-expiry", "600"]
STEADY = [f"size-dev-{i}" for i in range(3)]  # a message or more in every window
SPARSE = [f"size-sparse-{i}" for i in range(3)]  # messages in one window of three, idle in the others
CRITERIA = {"mlDetectionConfig": {"confidenceLevel": "HIGH"},
            "consecutiveDatapointsToAlarm": 2, "consecutiveDatapointsToClear": 2}
# The largest message of each window; and of the status messages alone (a TOPIC_FILTER dimension,
# which ML Detect allows on message sizes): only the steady devices send those.
BEHAVIORS = [{"name": "size-ml", "metric": "aws:message-byte-size", "criteria": CRITERIA},
             {"name": "status-size-ml", "metric": "aws:message-byte-size", "criteria": CRITERIA,
              "metricDimension": {"dimensionName": "status", "operator": "IN"}}]


@pytest.fixture
def size_service():
    with service_with(ARGS) as svc:
        yield svc


class Fleet:
    """Each device sends messages of its own usual size, 200 to 286 bytes (the largest of a window
    varies by a few bytes), the steady ones a status message of about 60 bytes too; the sparse
    ones only in every third window."""

    def __init__(self, port: int) -> None:
        self.clients = {name: client(port, name) for name in STEADY + SPARSE}
        self.oversized: set[str] = set()
        self.quiet: set[str] = set()
        self.step = 0

    def usual(self, name: str) -> int:
        base = 200 + 40 * (STEADY + SPARSE).index(name) % 120
        return base + self.step % 7

    def send(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            window = int(time.time() / WINDOW)
            for name, c in self.clients.items():
                if name in self.quiet or (name in SPARSE and window % 3):
                    continue
                size = 5000 if name in self.oversized else self.usual(name)
                c.publish(f"telemetry/{name}", b"x" * size, qos=0)
                if name in STEADY:
                    c.publish(f"status/{name}", b"s" * (60 + self.step % 5), qos=0)
            self.step += 1
            time.sleep(0.03)

    def close(self) -> None:
        for c in self.clients.values():
            c.disconnect()
            stop_network_loop(c)


def summaries(iot) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    found = iot.get_behavior_model_training_summaries(securityProfileName="sizes")["summaries"]
    return {s["behaviorName"]: s for s in found}


def model(svc: ServiceProcess, thing: str, behavior: str = "size-ml") -> dict:
    return send_signed("GET", f"{svc.endpoint}/_iotdefender/behavior-models/sizes/{behavior}/things/{thing}").json()


def high_band(learned: dict) -> tuple[float, float]:
    """The lowest and the highest edge of the HIGH band over the week."""
    return min(slot["HIGH"][0] for slot in learned["bands"]), max(slot["HIGH"][1] for slot in learned["bands"])


def test_a_message_size_model_learns_sizes_not_idle_windows_and_alarms_on_larger_messages(size_service):
    svc = size_service
    iot = svc.client()
    iot.create_dimension(name="status", type="TOPIC_FILTER", stringValues=["status/#"], clientRequestToken="status")
    iot.create_security_profile(securityProfileName="sizes", behaviors=BEHAVIORS)
    iot.attach_security_profile(securityProfileName="sizes", securityProfileTargetArn=ALL_THINGS)
    assert {s["modelStatus"] for s in summaries(iot).values()} == {"PENDING_BUILD"}

    fleet = Fleet(svc.mqtt_port)
    try:
        deadline = time.monotonic() + 20
        while {s["modelStatus"] for s in summaries(iot).values()} != {"ACTIVE"}:
            assert time.monotonic() < deadline, [(s["behaviorName"], s["modelStatus"], s["datapointsCollectionPercentage"])
                                                 for s in summaries(iot).values()]
            fleet.send(0.5)

        # Trained on the sizes alone: a sparse device idle two windows of three has a band of its
        # own sizes, far above 0 at every hour (0s for its idle windows would have pulled its lower
        # edge to 0), and the model counts only the windows that had messages.
        for name in (SPARSE[0], STEADY[0]):
            learned = model(svc, name)["model"]
            assert learned["devices"] == len(STEADY + SPARSE)
            low, high = high_band(learned)
            assert low > 50 and high < 2000, (name, low, high)
        windows = 6 / WINDOW
        assert model(svc, SPARSE[0])["model"]["datapoints"] <= len(STEADY) * (windows + 2) + len(SPARSE) * (
            windows / 3 + 2)
        # The status messages' model: of the steady devices alone (a window without a status
        # message has no datapoint of the dimension's series), in their sizes.
        status = model(svc, STEADY[1], "status-size-ml")["model"]
        assert status["devices"] == len(STEADY) and status["datapoints"] <= len(STEADY) * (windows + 2)
        low, high = high_band(status)
        assert 20 < low and high < 200, (low, high)

        # Every device idle for six windows, connected: no datapoint, no alarm.
        fleet.quiet = set(fleet.clients)
        fleet.send(6 * WINDOW)
        fleet.quiet = set()
        fleet.send(4 * WINDOW)
        assert events(iot) == []

        # One device sends much larger messages: in-alarm at HIGH after two windows of them.
        odd = STEADY[0]
        fleet.oversized = {odd}
        deadline = time.monotonic() + 5
        while not events(iot, thingName=odd):
            assert time.monotonic() < deadline, "no in-alarm"
            fleet.send(WINDOW)
        (opened,) = events(iot, thingName=odd)
        assert opened["violationEventType"] == "in-alarm"
        assert opened["violationEventAdditionalInfo"] == {"confidenceLevel": "HIGH"}
        assert opened["metricValue"] == {"count": 5000}
        assert opened["behavior"]["name"] == "size-ml"  # its status messages are as usual
        (active,) = iot.list_active_violations(behaviorCriteriaType="MACHINE_LEARNING")["activeViolations"]
        assert active["thingName"] == odd and active["violationEventAdditionalInfo"] == {"confidenceLevel": "HIGH"}

        # Idle again: the alarm neither clears nor is joined by others.
        fleet.oversized = set()
        fleet.quiet = {odd}
        fleet.send(4 * WINDOW)
        assert [e["violationEventType"] for e in events(iot)] == ["in-alarm"]

        # Its usual sizes again: two windows of them clear it.
        fleet.quiet = set()
        deadline = time.monotonic() + 5
        while len(events(iot, thingName=odd)) < 2:
            assert time.monotonic() < deadline, "no alarm-cleared"
            fleet.send(WINDOW)
        assert [e["violationEventType"] for e in events(iot)] == ["in-alarm", "alarm-cleared"]
        assert events(iot, thingName=odd)[1]["metricValue"]["count"] < 400
        assert iot.list_active_violations()["activeViolations"] == []
    finally:
        fleet.close()
