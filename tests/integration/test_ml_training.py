"""ML Detect on a real SQLite database, on a synthetic clock: the trainer takes a behavior from
PENDING_BUILD to ACTIVE on the stored datapoints, refreshes and expires it, starts over when the
metric or the targets change but not when the confidence level does, and resumes after a restart;
detection judges with the active model, alarms and clears with evidence, and invalidates alarms
whose model stopped."""

from __future__ import annotations

import math
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.backtest.runner import BacktestRequest, run_backtest
from iotdefender.contract.errors import ApiError
from iotdefender.controlplane.behavior_models import behavior_model_document
from iotdefender.controlplane.violations import violation_evidence
from iotdefender.engine.ml import BehaviorModel, ConfidenceLevel, train
from iotdefender.metrics_catalog import AWAY_SERIES
from iotdefender.pipeline.batch_store import ignore_events
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.local_store import LocalBatchStore
from iotdefender.pipeline.ml_training import MlTrainer, TrainingSchedule
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store import history, ml_models

ACCOUNT = "123456789012"
ALL_THINGS = f"arn:aws:iot:us-east-1:{ACCOUNT}:all/things"
METRIC = "aws:all-bytes-out"
SIZE, SMALLEST = "aws:message-byte-size", "aws:message-byte-size|smallest"
SENT = "aws:num-messages-sent"
DEVICES = [f"dev-{i}" for i in range(10)]
T0 = 1_000_000.0
# --time-scale 3600: an hour lasts a second, a day 24 s, a week 168 s.
SCHEDULE = TrainingSchedule(training_period=200.0, min_datapoints=2000, refresh_period=50.0, expiry=150.0,
                            time_scale=3600.0)


def normal(device: int, at: float) -> float:
    """Each device its own level, a daily rhythm (a 24 s day) and a little noise."""
    daily = 1.0 + 0.3 * math.sin(2 * math.pi * (at % 24.0) / 24.0)
    noise = 1.0 + 0.05 * math.sin(at * 7.3 + device)
    return (1000.0 + 100.0 * device) * daily * noise


def ml_behavior(level: str = "HIGH", metric: str = METRIC) -> dict[str, Any]:
    return {"name": "bytes-ml", "metric": metric,
            "criteria": {"mlDetectionConfig": {"confidenceLevel": level},
                         "consecutiveDatapointsToAlarm": 2, "consecutiveDatapointsToClear": 2}}


@pytest.fixture(params=["sqlite", "postgresql"])
def place(request, tmp_path) -> Callable[[], Settings]:
    """A new database for each service a test opens, on SQLite or PostgreSQL."""
    count = itertools.count()

    def settings() -> Settings:
        n = next(count)
        url = (request.getfixturevalue("postgres").create_database(f"mlt{time.time_ns()}")
               if request.param == "postgresql" else None)
        return Settings(data_dir=tmp_path / str(n), database_url=url, time_scale=3600.0)

    return settings


class Service:
    """The API, the batch store and the trainer over one database, as serve assembles them."""

    def __init__(self, place: Callable[[], Settings]) -> None:
        self.api = build_api(place())
        self.engine = self.api.context.engine
        self.published = 0
        self.start()

    def start(self) -> None:
        """(Re)start detection and the trainer from the database, as after a restart."""
        self.monitoring = MonitoringIndex(self.engine, self.api.context.arn(""))
        self.detection = DetectionService(self.engine, self.monitoring, AlertRoutes({}), 10_000.0, 3600.0)
        self.detection.load()
        self.store = LocalBatchStore(self.engine, self.monitoring, self.detection, ignore_events)
        self.trainer = MlTrainer(self.engine, self.monitoring, SCHEDULE, on_published=self._published)

    def _published(self) -> None:
        self.published += 1
        self.store.invalidate()

    def report(self, start: float, end: float, step: float = 1.0) -> None:
        """Every device reports its normal value every ``step`` seconds in [start, end)."""
        at, report_id = start, int(start)
        while at < end:
            self.store.store_batch([(name, {METRIC: {"count": int(normal(i, at))}}, at, report_id)
                                    for i, name in enumerate(DEVICES)])
            at += step
            report_id += 1

    def training(self) -> ml_models.Training:
        with self.engine.connect() as conn:
            return ml_models.load_trainings(conn)[("p", "bytes-ml")]

    def summaries(self) -> list[dict[str, Any]]:
        return self.api.invoke("GetBehaviorModelTrainingSummaries", {"securityProfileName": "p"})["summaries"]


def make_service(place: Any, level: str = "HIGH", metric: str = METRIC) -> Service:
    service = Service(place)
    service.api.invoke("CreateSecurityProfile", {"securityProfileName": "p",
                                                 "behaviors": [ml_behavior(level, metric)]})
    service.api.invoke("AttachSecurityProfile", {"securityProfileName": "p", "securityProfileTargetArn": ALL_THINGS})
    service.monitoring.invalidate()
    return service


def trained(place: Any, level: str = "HIGH") -> Service:
    service = make_service(place, level)
    service.trainer.run_once(T0)
    service.report(T0, T0 + 200)
    service.trainer.run_once(T0 + 200)
    return service


def test_pending_then_active_with_the_percentage_climbing(place):
    service = make_service(place)
    assert service.summaries() == [{"securityProfileName": "p", "behaviorName": "bytes-ml",
                                    "modelStatus": "PENDING_BUILD", "datapointsCollectionPercentage": 0.0}]
    service.trainer.run_once(T0)
    assert service.summaries()[0]["trainingDataCollectionStartDate"] == T0
    service.report(T0, T0 + 100)  # half the period, half the datapoints
    service.trainer.run_once(T0 + 100)
    (halfway,) = service.summaries()
    assert halfway["modelStatus"] == "PENDING_BUILD" and halfway["datapointsCollectionPercentage"] == 50.0
    assert service.published == 0  # nothing for detection to load yet
    service.report(T0 + 100, T0 + 200)
    service.trainer.run_once(T0 + 200)
    (active,) = service.summaries()
    assert active["modelStatus"] == "ACTIVE" and active["datapointsCollectionPercentage"] == 100.0
    assert active["lastModelRefreshDate"] == T0 + 200 and service.published == 1
    with service.engine.connect() as conn:
        stored = ml_models.load_model(conn, ("p", "bytes-ml"), 1)
    assert stored is not None and stored.datapoints == 2000 and stored.devices == 10
    assert (stored.window_start, stored.window_end) == (T0, T0 + 200)


def test_enough_time_without_enough_datapoints_stays_pending(place):
    service = make_service(place)
    service.trainer.run_once(T0)
    service.report(T0, T0 + 200, step=2.0)  # 1,000 datapoints of the 2,000 needed
    service.trainer.run_once(T0 + 200)
    assert service.training().status == "PENDING_BUILD" and service.training().datapoints_percentage == 50.0


def test_a_device_that_breaks_its_pattern_alarms_with_evidence_and_clears(place):
    service = trained(place)
    now = T0 + 201
    spike = normal(3, now) * 20
    assert service.store.store_batch([("dev-3", {METRIC: {"count": int(spike)}}, now, 10**6)]) == []  # 1 of 2
    events = service.store.store_batch([("dev-3", {METRIC: {"count": int(spike)}}, now + 1, 10**6 + 1)])
    assert events == [("in-alarm", "p", "bytes-ml")]
    page = service.api.invoke("ListViolationEvents", {"startTime": T0, "endTime": now + 10,
                                                      "behaviorCriteriaType": "MACHINE_LEARNING"})
    (event,) = page["violationEvents"]
    assert event["violationEventAdditionalInfo"] == {"confidenceLevel": "HIGH"}
    assert service.api.invoke("ListViolationEvents", {"startTime": T0, "endTime": now + 10,
                                                      "behaviorCriteriaType": "STATIC"})["violationEvents"] == []
    (active,) = service.api.invoke("ListActiveViolations", {"behaviorCriteriaType": "MACHINE_LEARNING"})[
        "activeViolations"]
    assert active["violationEventAdditionalInfo"] == {"confidenceLevel": "HIGH"}
    evidence = violation_evidence(service.api.context, event["violationId"])["events"][0]["evidence"]
    assert evidence["confidenceLevel"] == "HIGH" and evidence["judgedConfidenceLevel"] == "HIGH"
    assert evidence["band"]["low"] < normal(3, now + 1) < evidence["band"]["high"] < spike
    assert "dev-3" in evidence["explanation"] and evidence["modelVersion"] == 1
    cleared = []
    for k in range(2, 5):
        cleared += service.store.store_batch([("dev-3", {METRIC: {"count": int(normal(3, now + k))}}, now + k,
                                               10**6 + k)])
    assert cleared == [("alarm-cleared", "p", "bytes-ml")]


def test_the_confidence_level_sets_the_sensitivity_and_editing_it_does_not_retrain(place):
    service = trained(place, level="LOW")
    with service.engine.connect() as conn:
        stored = ml_models.load_model(conn, ("p", "bytes-ml"), 1)
    assert stored is not None
    model = BehaviorModel.from_bytes(stored.model)
    now = T0 + 201.5
    # A value the model judges LOW (outside the LOW band, inside MEDIUM's): LOW alarms, HIGH does not.
    _, low_high = model.band("dev-2", now, ConfidenceLevel.LOW)
    _, medium_high = model.band("dev-2", now, ConfidenceLevel.MEDIUM)
    odd = int((low_high + medium_high) / 2)
    assert model.judge("dev-2", odd, now) is ConfidenceLevel.LOW
    events = service.store.store_batch([("dev-2", {METRIC: {"count": odd}}, now, 10**6),
                                        ("dev-2", {METRIC: {"count": odd}}, now + 0.1, 10**6 + 1)])
    assert events == [("in-alarm", "p", "bytes-ml")]
    version = service.api.invoke("DescribeSecurityProfile", {"securityProfileName": "p"})["version"]
    service.api.invoke("UpdateSecurityProfile", {"securityProfileName": "p", "behaviors": [ml_behavior("HIGH")],
                                                 "expectedVersion": version})
    service.store.invalidate()
    service.trainer.run_once(T0 + 210)
    assert service.training().collection_start == T0 and service.training().active_version == 1  # not retrained
    events = []
    for k in range(2):  # the same value is normal at HIGH: the alarm clears
        events += service.store.store_batch([("dev-2", {METRIC: {"count": odd}}, now + 1 + k, 10**6 + 2 + k)])
    assert events == [("alarm-cleared", "p", "bytes-ml")]


def test_changing_the_metric_or_the_targets_starts_over(place):
    service = trained(place)
    version = service.api.invoke("DescribeSecurityProfile", {"securityProfileName": "p"})["version"]
    service.api.invoke("UpdateSecurityProfile", {"securityProfileName": "p",
                                                 "behaviors": [ml_behavior(metric="aws:all-bytes-in")],
                                                 "expectedVersion": version})
    # Until the trainer looks, the summary already says the old model is not this behavior's.
    assert service.summaries()[0]["modelStatus"] == "PENDING_BUILD"
    service.trainer.run_once(T0 + 210)
    assert service.training().collection_start == T0 + 210 and service.training().active_version is None
    service.api.invoke("UpdateSecurityProfile", {"securityProfileName": "p", "behaviors": [ml_behavior()],
                                                 "expectedVersion": version + 1})
    service.trainer.run_once(T0 + 220)
    assert service.training().collection_start == T0 + 220
    service.api.invoke("AttachSecurityProfile", {"securityProfileName": "p",
                                                 "securityProfileTargetArn": ALL_THINGS.replace(
                                                     "all/things", "all/registered-things")})
    service.trainer.run_once(T0 + 230)
    assert service.training().collection_start == T0 + 230


def test_refreshed_then_expired_and_its_alarms_invalidated(place):
    service = trained(place)
    service.report(T0 + 200, T0 + 250)
    service.trainer.run_once(T0 + 240)  # not due: refreshes every 50 s
    assert service.training().active_version == 1
    service.trainer.run_once(T0 + 250)
    assert service.training().active_version == 2 and service.training().last_refresh_at == T0 + 250
    now = T0 + 251
    spike = {METRIC: {"count": int(normal(1, now) * 30)}}
    assert service.store.store_batch([("dev-1", spike, now, 10**6), ("dev-1", spike, now + 0.5, 10**6 + 1)]) == [
        ("in-alarm", "p", "bytes-ml")]
    # The devices go quiet: refreshes fail for lack of datapoints, the model expires after 150 s.
    service.trainer.run_once(T0 + 390)
    assert service.training().status == "ACTIVE"
    assert service.store.sweep(T0 + 390) == []
    service.trainer.run_once(T0 + 400)
    assert service.training().status == "EXPIRED" and service.summaries()[0]["modelStatus"] == "EXPIRED"
    # What the last attempt (T0 + 390) found in [T0 + 190, T0 + 390]: 100 + 500 reports; the 2 spikes
    # were judged anomalous by version 2 and are left out.
    assert service.summaries()[0]["datapointsCollectionPercentage"] == 30.0
    assert service.store.sweep(T0 + 400) == [("alarm-invalidated", "p", "bytes-ml")]
    # No model, no verdict: a spike does nothing.
    assert service.store.store_batch([("dev-4", spike, T0 + 401, 10**6), ("dev-4", spike, T0 + 402, 10**6 + 1)]) == []


def test_a_restart_resumes_collection_and_keeps_the_active_model(place):
    service = make_service(place)
    service.trainer.run_once(T0)
    service.report(T0, T0 + 120)
    service.trainer.run_once(T0 + 120)
    service.start()  # a restart: new detection, new trainer, same database
    service.report(T0 + 120, T0 + 200)
    service.trainer.run_once(T0 + 200)
    assert service.training().status == "ACTIVE" and service.training().collection_start == T0
    service.start()
    assert service.detection.evaluator.model_for("p", ml_behavior()) is not None
    now = T0 + 201
    spike = {METRIC: {"count": int(normal(5, now) * 30)}}
    assert service.store.store_batch([("dev-5", spike, now, 10**6), ("dev-5", spike, now + 0.5, 10**6 + 1)]) == [
        ("in-alarm", "p", "bytes-ml")]


def test_a_pending_behavior_is_counted_every_hundredth_of_the_period(place):
    service = make_service(place)
    service.trainer.run_once(T0)
    service.report(T0, T0 + 50)
    service.trainer.run_once(T0 + 50)
    assert service.training().datapoints == 500
    service.report(T0 + 50, T0 + 51)
    service.trainer.run_once(T0 + 51)  # 1 s after the last count: the period is 200 s, counted every 2 s
    assert service.training().datapoints == 500
    service.trainer.run_once(T0 + 52)
    assert service.training().datapoints == 510


def test_a_pending_behavior_past_its_minimum_is_counted_from_its_newest_datapoints_only(place):
    """Collecting, the percentage needs the datapoints only up to the minimum: they are read newest
    first in growing slices of the period (a thousandth, a hundredth, a tenth, all), not the whole
    period each time (at 100,000 devices hundreds of millions of datapoints every hundredth of it)."""
    service = make_service(place)
    trainer = MlTrainer(service.engine, service.monitoring,
                        TrainingSchedule(training_period=200.0, min_datapoints=100, refresh_period=50.0,
                                         expiry=150.0, time_scale=3600.0), on_published=lambda: None)
    trainer.run_once(T0)
    service.report(T0, T0 + 100)  # 1,000 datapoints, 10 a second
    trainer.run_once(T0 + 100)
    collecting = service.training()
    assert collecting.status == "PENDING_BUILD" and collecting.datapoints_percentage == 50.0  # the time's half
    assert 100 <= collecting.datapoints <= 210  # the newest 20 s were enough: not the 1,000 of the period
    service.report(T0 + 100, T0 + 200)
    trainer.run_once(T0 + 200)  # a build reads the whole period
    assert service.training().status == "ACTIVE"
    with service.engine.connect() as conn:
        stored = ml_models.load_model(conn, ("p", "bytes-ml"), 1)
    assert stored is not None and stored.datapoints == 2000


def test_summaries_page_by_profile_and_behavior_and_refuse_bad_input(place):
    service = make_service(place)
    static = {"name": "static", "metric": METRIC, "criteria": {"comparisonOperator": "less-than",
                                                               "value": {"count": 10}}}
    service.api.invoke("CreateSecurityProfile", {"securityProfileName": "a",
                                                 "behaviors": [ml_behavior(), static,
                                                               {**ml_behavior(), "name": "another"}]})
    listed, token = [], None
    while True:
        page = service.api.invoke("GetBehaviorModelTrainingSummaries",
                                  {"maxResults": 2, **({"nextToken": token} if token else {})})
        listed += [(s["securityProfileName"], s["behaviorName"]) for s in page["summaries"]]
        token = page.get("nextToken")
        if not token:
            break
    assert listed == [("a", "another"), ("a", "bytes-ml"), ("p", "bytes-ml")]  # never the static behavior
    for bad in ({"maxResults": 11}, {"maxResults": 0}, {"nextToken": "garbage"}):
        with pytest.raises(ApiError) as refused:
            service.api.invoke("GetBehaviorModelTrainingSummaries", bad)
        assert (refused.value.code, refused.value.status) == ("InvalidRequestException", 400)
    with pytest.raises(ApiError) as missing:
        service.api.invoke("GetBehaviorModelTrainingSummaries", {"securityProfileName": "missing"})
    assert (missing.value.code, missing.value.status) == ("ResourceNotFoundException", 404)


def test_the_model_document_shows_every_slot_and_level_in_the_metrics_units(place):
    service = trained(place)
    fleet = behavior_model_document(service.api.context, "p", "bytes-ml")
    device = behavior_model_document(service.api.context, "p", "bytes-ml", "dev-9")
    assert fleet["modelStatus"] == "ACTIVE" and fleet["model"]["version"] == 1
    assert len(fleet["model"]["bands"]) == 336 and fleet["model"]["bands"][77]["label"] == "Tuesday 14:30"
    own = device["model"]["bands"][0]
    assert own["LOW"][0] >= own["HIGH"][0] and own["LOW"][1] <= own["HIGH"][1]
    assert own["LOW"][0] > fleet["model"]["bands"][0]["LOW"][0]  # dev-9 reports the most: its own band is higher
    for side in ("thresholds", "thresholdsBelow"):  # robust standard deviations above and below the normal
        assert set(device["model"][side]) == {"LOW", "MEDIUM", "HIGH"} and device["model"][side]["HIGH"] >= 4.75
    pending = make_service(place)
    assert behavior_model_document(pending.api.context, "p", "bytes-ml")["model"] is None
    for args, code in ((("p", "nope"), "ResourceNotFoundException"), (("missing", "bytes-ml"),
                                                                      "ResourceNotFoundException"),
                       (("p", "bad name!"), "InvalidRequestException")):
        with pytest.raises(ApiError) as refused:
            behavior_model_document(service.api.context, *args)
        assert refused.value.code == code


def test_a_backtest_replays_each_moment_with_the_model_active_then(place):
    service = trained(place)  # version 1 built at T0 + 200 on [T0, T0 + 200]
    spike = {METRIC: {"count": int(normal(7, T0 + 100) * 30)}}
    # The same spike twice before any model was built and twice after: only the second pair alarms.
    service.store.store_batch([("dev-7", spike, T0 + 100.2, 10**6), ("dev-7", spike, T0 + 100.4, 10**6 + 1)])
    service.store.store_batch([("dev-7", spike, T0 + 210.2, 10**6 + 2), ("dev-7", spike, T0 + 210.4, 10**6 + 3)])
    request = BacktestRequest([ml_behavior()], T0, T0 + 220, covers=lambda thing: True, profile_name="p",
                              time_scale=3600.0, invalidation_period=10_000.0)
    (outcome,) = run_backtest(service.engine, request)["behaviors"]
    assert outcome["method"] == "engine" and "model versions 1 to 1" in outcome["note"]
    assert "no verdict before 1970-01-12T13:50:00.000Z" in outcome["note"]  # T0 + 200, as people read time
    assert [(e["thingName"], e["violationEventType"], e["violationEventTime"]) for e in outcome["events"]] == [
        ("dev-7", "in-alarm", T0 + 210.4)]
    assert outcome["events"][0]["violationEventAdditionalInfo"] == {"confidenceLevel": "HIGH"}
    unsaved = BacktestRequest([ml_behavior()], T0, T0 + 220, covers=lambda thing: True, time_scale=3600.0)
    (nothing,) = run_backtest(service.engine, unsaved)["behaviors"]
    assert nothing["alarms"] == 0 and "no model of this behavior" in nothing["note"]


def test_a_behavior_whose_training_fails_does_not_stop_the_others(place):
    service = make_service(place)
    version = service.api.invoke("DescribeSecurityProfile", {"securityProfileName": "p"})["version"]
    service.api.invoke("UpdateSecurityProfile", {"securityProfileName": "p", "expectedVersion": version,
                                                 "behaviors": [ml_behavior(), {**ml_behavior(), "name": "second"}]})
    calls = []

    def failing_once(data, **settings):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a defect in training")
        return train(data, **settings)

    service.trainer = MlTrainer(service.engine, service.monitoring, SCHEDULE, on_published=lambda: None,
                                train=failing_once)
    service.trainer.run_once(T0)
    service.report(T0, T0 + 200)
    statuses = sorted(t.status for t in service.trainer.run_once(T0 + 200))
    assert statuses == ["ACTIVE", "PENDING_BUILD"]
    assert sorted(t.status for t in service.trainer.run_once(T0 + 200)) == ["ACTIVE", "ACTIVE"]  # tried again


def test_a_behavior_with_a_dimension_trains_on_its_dimensions_series(place):
    service = Service(place)
    service.api.invoke("CreateDimension", {"name": "telemetry", "type": "TOPIC_FILTER",
                                           "stringValues": ["telemetry/#"], "clientRequestToken": "d1"})
    behavior = {"name": "sent-ml", "metric": "aws:num-messages-sent",
                "metricDimension": {"dimensionName": "telemetry"},
                "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}}}
    service.api.invoke("CreateSecurityProfile", {"securityProfileName": "p", "behaviors": [behavior]})
    service.api.invoke("AttachSecurityProfile", {"securityProfileName": "p", "securityProfileTargetArn": ALL_THINGS})
    service.monitoring.invalidate()
    series = "aws:num-messages-sent|telemetry|IN"
    service.trainer.run_once(T0)
    for k in range(200):  # the dimension's series only: the plain metric's datapoints are not its model's
        service.store.store_batch([(name, {series: {"count": 10 + (i + k) % 5},
                                           "aws:num-messages-sent": {"count": 1000}}, T0 + k, None)
                                   for i, name in enumerate(DEVICES)])
    (training,) = service.trainer.run_once(T0 + 200)
    assert (training.status, training.series, training.dimension) == ("ACTIVE", series, "telemetry|IN")
    burst = {series: {"count": 5000}}
    assert service.store.store_batch([("dev-0", burst, T0 + 201, None)]) == [("in-alarm", "p", "sent-ml")]
    assert service.store.store_batch([("dev-1", {"aws:num-messages-sent": {"count": 5000}}, T0 + 201, None)]) == []


def test_a_refresh_does_not_learn_an_ongoing_anomaly(place):
    """dev-3 sends 20 times its normal from just after version 1 through the refresh at T0 + 250:
    version 2 is trained without those datapoints, so dev-3 stays in alarm and its band is not
    widened (with them, a quarter of its window is the anomaly and the band takes it in)."""
    service = trained(place)
    before = behavior_model_document(service.api.context, "p", "bytes-ml", "dev-3")["model"]["bands"]
    events = []
    at, report_id = T0 + 200.0, 10**6
    while at < T0 + 300:
        events += service.store.store_batch(
            [(name, {METRIC: {"count": int(normal(i, at) * (20 if name == "dev-3" and at > T0 + 200 else 1))}},
              at, report_id) for i, name in enumerate(DEVICES)])
        if at == T0 + 250:
            service.trainer.run_once(at)
            assert service.training().active_version == 2
        at += 0.5  # twice as often: the window still holds the 2,000 datapoints a build needs without dev-3's
        report_id += 1
    assert events == [("in-alarm", "p", "bytes-ml")]  # and never cleared across the refresh
    after = behavior_model_document(service.api.context, "p", "bytes-ml", "dev-3")["model"]
    assert after["version"] == 2
    for old, new in zip(before, after["bands"]):
        assert new["HIGH"][1] < 1.5 * old["HIGH"][1] and new["LOW"][1] < 1.5 * old["LOW"][1]
        assert new["HIGH"][1] < normal(3, T0) * 20 / 3
    # dev-3 goes back to its normal: the alarm raised under version 1 clears under version 2, and says so.
    cleared = []
    for k in range(3):
        cleared += service.store.store_batch([("dev-3", {METRIC: {"count": int(normal(3, at + k))}}, at + k,
                                               report_id + k)])
    assert cleared == [("alarm-cleared", "p", "bytes-ml")]
    (violation,) = [e for e in service.api.invoke("ListViolationEvents", {"startTime": T0, "endTime": at + 10})[
        "violationEvents"] if e["violationEventType"] == "alarm-cleared"]
    raised, clearing = violation_evidence(service.api.context, violation["violationId"])["events"]
    assert raised["evidence"]["modelVersion"] == 1 and "alarmModelVersion" not in raised["evidence"]
    assert clearing["evidence"]["modelVersion"] == 2 and clearing["evidence"]["alarmModelVersion"] == 1
    assert "is within the HIGH band of model version 2" in clearing["evidence"]["explanation"]
    assert "raised under model version 1" in clearing["evidence"]["explanation"]


def test_a_fleet_wide_silence_across_a_refresh_is_not_learned(place):
    """Every device reports 0 (connected, nothing sent) from T0 + 200 through the refresh at
    T0 + 250: the zeros were judged anomalous by version 1 and are left out, which leaves fewer
    than the 2,000 datapoints a build needs, so there is no refresh on a window of silence (the
    model stays version 1, as after any build that lacked its datapoints), and when the fleet
    resumes its normal nothing alarms (it clears instead)."""
    service = trained(place)
    at, report_id, silent = T0 + 200.0, 10**6, []
    while at < T0 + 260:
        silent += service.store.store_batch([(name, {METRIC: {"count": 0}}, at, report_id) for name in DEVICES])
        if at == T0 + 250:
            service.trainer.run_once(at)
            assert (service.training().active_version, service.training().datapoints) == (1, 1500)
        at += 0.5
        report_id += 1
    assert sorted(silent) == [("in-alarm", "p", "bytes-ml")] * len(DEVICES)  # the silence is an anomaly
    resumed = []
    while at < T0 + 270:
        resumed += service.store.store_batch([(name, {METRIC: {"count": int(normal(i, at))}}, at, report_id)
                                              for i, name in enumerate(DEVICES)])
        at += 0.5
        report_id += 1
    assert sorted(resumed) == [("alarm-cleared", "p", "bytes-ml")] * len(DEVICES)


@pytest.mark.parametrize("away", [True, False], ids=["disconnected", "connected"])
def test_a_fleet_away_for_more_than_half_the_training_period_is_not_learned(place, away):
    """The fleet's cloud-side windows from T0 + 200 to T0 + 310 hold 0 messages. Disconnected
    (the windows say so: ``AWAY_SERIES``, as the aggregator writes them), the 0s are neither
    training data nor judged: the refreshes at T0 + 250 and T0 + 300 find 1,500 and 1,000
    datapoints, too few, the model stays version 1, nothing alarms while the fleet is away nor
    when it returns, and a flood afterwards alarms. Connected and
    silent, the 0s are behaviour: at T0 + 300 they are half of each device's window, its new
    normal (ml_exclusion.py), version 2 learns them and the silence's alarms clear while the fleet
    is still silent. Before, a disconnected fleet went that way too (an outside-in run, silent for
    longer: the model learned nothing but 0s and 15 of 15 devices alarmed at HIGH on return)."""
    service = make_service(place, metric=SENT)
    service.trainer.run_once(T0)
    at, report_id = T0, itertools.count()
    while at < T0 + 200:
        service.store.store_batch([(name, {SENT: {"count": int(normal(i, at))}}, at, next(report_id))
                                   for i, name in enumerate(DEVICES)])
        at += 1.0
    service.trainer.run_once(T0 + 200)
    assert service.training().active_version == 1
    silence = {SENT: {"count": 0}, AWAY_SERIES: {"count": 1}} if away else {SENT: {"count": 0}}
    silent = []
    while at < T0 + 310:
        silent += service.store.store_batch([(name, silence, at, next(report_id)) for name in DEVICES])
        if at in (T0 + 250, T0 + 300):
            service.trainer.run_once(at)
        if at == T0 + 280:  # what training reads is partly compacted, partly rows not compacted yet
            with service.engine.connect() as conn:
                last = history.max_row_id(conn)
            assert history.compact_until(service.engine, last) > 0
        at += 1.0
    raised = [("in-alarm", "p", "bytes-ml")] * len(DEVICES)  # the silence is an anomaly
    if away:  # no datapoint of the devices' behaviour: no verdict, no alarm (static behaviors do judge them)
        assert silent == []
        assert service.training().active_version == 1 and service.training().datapoints == 1000
    else:  # learned while silent: the alarms clear before the fleet is back
        assert sorted(silent) == [("alarm-cleared", "p", "bytes-ml")] * len(DEVICES) + raised
        assert service.training().active_version == 2
    resumed = []
    while at < T0 + 320:
        resumed += service.store.store_batch([(name, {SENT: {"count": int(normal(i, at))}}, at, next(report_id))
                                              for i, name in enumerate(DEVICES)])
        at += 1.0
    # Version 1 judges the return normal; connected, version 2's bands span both the silence and
    # the normal. Either way nothing alarms.
    assert resumed == []
    if away:  # the model in force still finds what it was built to: a flood of messages
        flood = [service.store.store_batch([("dev-3", {SENT: {"count": int(normal(3, at + k) * 20)}}, at + k,
                                             next(report_id))]) for k in range(2)]
        assert flood == [[], [("in-alarm", "p", "bytes-ml")]]


def test_devices_that_connect_now_and_then_are_learned_and_judged_on_their_connections(place):
    """AWS's own example of ML Detect's minimum: devices that connect every 45 minutes. Here 100
    devices each connect for one window in eight, sending their usual number of messages, and are
    away for the other seven (0s marked ``AWAY_SERIES``). The model learns the connections only
    (2,500 datapoints: the minimum counts them, not the 0s), nothing alarms between them, and a
    flood in a connection does."""
    devices = [f"dev-{i}" for i in range(100)]
    service = make_service(place, metric=SENT)
    service.trainer.run_once(T0)
    report_id, events = itertools.count(), []

    def window(at: float, flood: str | None = None) -> None:
        batch = []
        for i, name in enumerate(devices):
            if (int(at - T0) + i) % 8:
                batch.append((name, {SENT: {"count": 0}, AWAY_SERIES: {"count": 1}}, at, next(report_id)))
            else:
                sent = normal(i % 10, at) / 50 * (20 if name == flood else 1)
                batch.append((name, {SENT: {"count": int(sent)}}, at, next(report_id)))
        events.extend(service.store.store_batch(batch))

    for step in range(200):
        window(T0 + step)
    service.trainer.run_once(T0 + 200)
    training = service.training()
    assert (training.status, training.datapoints) == ("ACTIVE", 2500)
    for step in range(200, 240):
        window(T0 + step)
    assert events == []
    for step in range(240, 256):  # dev-5 floods in each of its two connections
        window(T0 + step, flood="dev-5")
    assert events == [("in-alarm", "p", "bytes-ml")]


def test_the_model_is_trained_on_datapoints_grouped_by_device_in_time_order(place):
    """The model reads each device's tail from all its datapoints only when they come grouped by
    device (engine/ml/tails.py); history is read in time order, across devices."""
    from iotdefender.engine.ml.tails import grouped

    service = make_service(place)
    seen = []

    def recording(data, **settings):  # type: ignore[no-untyped-def]
        seen.append(data)
        return train(data, **settings)

    service.trainer = MlTrainer(service.engine, service.monitoring, SCHEDULE, on_published=lambda: None,
                                train=recording)
    service.trainer.run_once(T0)
    service.report(T0, T0 + 200)
    service.trainer.run_once(T0 + 200)
    (data,) = seen
    assert len(set(data.device.tolist())) == len(DEVICES) and grouped(data.device)
    for code in set(data.device.tolist()):
        times = data.time[data.device == code]
        assert (times[1:] >= times[:-1]).all()


def test_a_message_size_model_never_learns_the_idle_zeros_of_older_releases(place):
    """Releases before the smallest message was kept stored 0 for a window without messages, in the
    largest's series alone: the model learns without them (not that "no message" is a normal
    size), and keeps a window whose messages were all empty (its smallest is 0 too)."""
    service = make_service(place, metric=SIZE)
    service.trainer.run_once(T0)
    upgraded, kept, report_id = T0 + 100, 0, itertools.count()
    for step in range(400):
        at = T0 + step / 2
        batch = []
        for i, name in enumerate(DEVICES):
            largest = int(normal(i, at) / 4)
            if at < upgraded:  # the older release: the largest alone, 0 when idle (one window of two)
                points = {SIZE: {"count": largest if step % 2 else 0}}
                kept += step % 2
            elif name == "dev-9" and step % 10 == 0:  # an empty message (0 bytes) and nothing else
                points = {SIZE: {"count": 0}, SMALLEST: {"count": 0}}
                kept += 1
            else:
                points = {SIZE: {"count": largest}, SMALLEST: {"count": largest - 50}}
                kept += 1
            batch.append((name, points, at, next(report_id)))
        service.store.store_batch(batch)
    service.trainer.run_once(T0 + 200)
    assert service.training().status == "ACTIVE"
    with service.engine.connect() as conn:
        stored = ml_models.load_model(conn, ("p", "bytes-ml"), 1)
    assert stored is not None and stored.datapoints == kept == 3000
    model = BehaviorModel.from_bytes(stored.model)
    for i in range(9):
        low, high = model.band(f"dev-{i}", T0 + 200, ConfidenceLevel.HIGH)
        assert normal(i, T0 + 200) / 4 / 2 < low < high < normal(i, T0 + 200) / 4 * 2, (i, low, high)


def test_a_backtest_of_a_message_size_model_over_an_older_releases_history_ignores_its_idle_zeros(place):
    """A backtest over history an older release stored (the largest alone, 0 for a window without
    messages) judges what live evaluation judges today: an idle window is no datapoint, so its 0 is
    neither a datapoint of the outcome nor an anomaly, however far below the model's band it is."""
    service = make_service(place, metric=SIZE)
    service.trainer.run_once(T0)
    report_id = itertools.count()
    for step in range(400):
        at = T0 + step / 2
        service.store.store_batch([(name, {SIZE: {"count": int(normal(i, at) / 4)},
                                           SMALLEST: {"count": int(normal(i, at) / 4) - 50}}, at, next(report_id))
                                   for i, name in enumerate(DEVICES)])
    service.trainer.run_once(T0 + 200)
    assert service.training().status == "ACTIVE"
    sent = 0
    for step in range(40):  # the older release after the model was built: two idle windows of four
        at = T0 + 200 + step / 2 + 0.25
        idle = step % 4 < 2
        sent += 0 if idle else len(DEVICES)
        service.store.store_batch([(name, {SIZE: {"count": 0 if idle else int(normal(i, at) / 4)}}, at,
                                    next(report_id)) for i, name in enumerate(DEVICES)])
    request = BacktestRequest([ml_behavior(metric=SIZE)], T0 + 200, T0 + 220, covers=lambda thing: True,
                              profile_name="p", time_scale=3600.0, invalidation_period=10_000.0)
    (outcome,) = run_backtest(service.engine, request)["behaviors"]
    assert outcome["method"] == "engine" and "model versions 1 to 1" in outcome["note"]
    assert outcome["datapoints"] == sent == 200 and outcome["alarms"] == 0, outcome["events"][:3]
