"""The pure engine judges ML behaviors with the models it is given, and with nothing else."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np

from iotdefender.engine.evaluator import Evaluator
from iotdefender.engine.ml import ConfidenceLevel, SeasonalClock, TrainingData, TrainingSettings, train
from iotdefender.engine.ml_behavior import ActiveModel, additional_info
from iotdefender.engine.ml_behavior import band as ml_band
from iotdefender.engine.ml_behavior import evidence as ml_evidence
from iotdefender.engine.ml_behavior import violates as ml_violates

METRIC = "load"  # a custom number metric: the model's own band, no count correction
COUNTS = "aws:num-established-tcp-connections"
HOUR = 1.0  # --time-scale 3600


def model() -> ActiveModel:
    rng = np.random.default_rng(1)
    n, devices = 20_000, [f"d{i}" for i in range(20)]
    device = rng.integers(0, len(devices), n).astype(np.int32)
    times = np.sort(rng.uniform(0, 400, n))
    values = 50.0 + 5 * device + rng.normal(0, 2, n)
    trained = train(TrainingData(device, devices, times, values), trained_at=400.0,
                    settings=TrainingSettings(clock=SeasonalClock(hour_seconds=HOUR)))
    return ActiveModel(METRIC, 3, trained)


def profile(level: str, metric: str = METRIC) -> dict:
    return {"name": "p", "behaviors": [{"name": "ml", "metric": metric, "criteria": {
        "mlDetectionConfig": {"confidenceLevel": level}, "consecutiveDatapointsToAlarm": 1}}]}


def events(evaluator: Evaluator, level: str, value: float, metric: str = METRIC) -> list:
    evaluation = evaluator.evaluate("d4", [profile(level, metric)], {metric: {"count": value}}, 401.0)
    return evaluation.events


def test_without_a_model_there_is_no_verdict():
    assert events(Evaluator(lambda: "v"), "LOW", 10_000) == []


def test_a_model_of_another_series_is_not_used():
    evaluator = Evaluator(lambda: "v")
    evaluator.use_models({("p", "ml"): model()})
    assert events(evaluator, "LOW", 10_000, metric="aws:num-listening-tcp-ports") == []


def test_the_behaviors_level_decides_and_the_evidence_explains():
    active = model()
    evaluator = Evaluator(lambda: "v")
    evaluator.use_models({("p", "ml"): active})
    assert events(evaluator, "HIGH", 70) == []  # d4's normal
    _, low_edge = active.model.band("d4", 401.0, ConfidenceLevel.LOW)
    _, medium_edge = active.model.band("d4", 401.0, ConfidenceLevel.MEDIUM)
    judged_low = (low_edge + medium_edge) / 2
    assert events(evaluator, "HIGH", judged_low) == [] and events(evaluator, "MEDIUM", judged_low) == []
    (event,) = events(evaluator, "LOW", judged_low)
    assert event.criteria_type == "MACHINE_LEARNING" and additional_info(event.behavior) == {"confidenceLevel": "LOW"}
    assert event.evidence["judgedConfidenceLevel"] == "LOW" and event.evidence["modelVersion"] == 3
    assert event.evidence["band"]["high"] == low_edge and "d4" in event.evidence["explanation"]


def test_the_sentence_quotes_the_evidence_band_and_a_clearing_says_it_is_within_it():
    """The sentence and the ``band`` are the behavior's level's band of the same version; an
    alarm-cleared whose value still reaches a lower level says it is within the band, not that it
    is anomalous (the in-alarm event's words)."""
    active = model()
    evaluator = Evaluator(lambda: "v")
    evaluator.use_models({("p", "ml"): active})
    _, high_edge = active.model.band("d4", 401.0, ConfidenceLevel.HIGH)
    raised = evaluator.evaluate("d4", [profile("HIGH")], {METRIC: {"count": high_edge * 3}}, 401.0)
    evaluator.apply(raised.changes)
    (alarm,) = raised.events
    band = alarm.evidence["band"]
    assert band["high"] == high_edge and alarm.evidence["judgedConfidenceLevel"] == "HIGH"
    text = alarm.evidence["explanation"]
    assert f"above {band['high']:.3g}, the upper edge of the HIGH band of model version 3 for d4" in text
    assert f"({band['low']:.3g} to {band['high']:.3g})" in text
    # The bands at the clearing's own moment: the model interpolates between slot centres.
    _, low_edge = active.model.band("d4", 401.5, ConfidenceLevel.LOW)
    _, medium_edge = active.model.band("d4", 401.5, ConfidenceLevel.MEDIUM)
    cleared = evaluator.evaluate("d4", [profile("HIGH")], {METRIC: {"count": (low_edge + medium_edge) / 2}}, 401.5)
    (event,) = cleared.events
    assert event.event_type.value == "alarm-cleared" and event.evidence["judgedConfidenceLevel"] == "LOW"
    text = event.evidence["explanation"]
    assert "is within the HIGH band of model version 3 for d4" in text and "normal at HIGH" in text
    assert "robust standard deviations" not in text and "is LOW" not in text


def test_the_evidence_sentence_tells_a_value_from_the_edge_it_crossed():
    """A value just above the band's upper edge: with both rounded to 3 digits the sentence read
    "36.2 ... is above 36.2"; the numbers it writes must compare as the numbers do."""
    active = model()
    _, high = active.model.band("d4", 401.0, ConfidenceLevel.LOW)
    value = high * (1 + 1e-5)
    evidence = ml_evidence(active, ConfidenceLevel.LOW, METRIC, "d4", value, 401.0)
    found = re.search(r"load (\S+) on .* is above (\S+), the upper edge", evidence["explanation"])
    assert found, evidence["explanation"]
    shown_value, shown_edge = (float(t.replace(",", "")) for t in found.groups())
    assert shown_value > shown_edge


def count_model() -> ActiveModel:
    """Devices reporting 2 to 5 connections, each as often (the simulator's fleet)."""
    rng = np.random.default_rng(2)
    n, devices = 12_000, [f"d{i}" for i in range(20)]
    device = rng.integers(0, len(devices), n).astype(np.int32)
    times = np.sort(rng.uniform(0, 400, n))
    trained = train(TrainingData(device, devices, times, rng.integers(2, 6, n).astype(np.float64)), trained_at=400.0,
                    settings=TrainingSettings(clock=SeasonalClock(hour_seconds=HOUR)))
    return ActiveModel(COUNTS, 1, trained)


def test_the_evidence_sentence_writes_one_unit_in_the_singular():
    sentence = ml_evidence(count_model(), ConfidenceLevel.LOW, COUNTS, "d4", 1.0, 401.0)["explanation"]
    assert f"{COUNTS} 1 connection on" in sentence and "1 connections" not in sentence


def test_a_count_is_in_or_out_of_the_band_with_its_edges_rounded():
    """Counts are judged against the band widened by half a unit (a continuity correction): an
    integer is inside iff it is inside the band with its edges rounded to the nearest integers,
    which the evidence shows; before, a band of [0.99, 4.99] cut off a 5 sent one time in four
    and the edge moving across 5 between slots made it alarm and clear in turn."""
    active = count_model()
    checked = 0
    for at in np.arange(400.0, 568.0, 0.37):  # a week of the model's clock
        for level in ConfidenceLevel:
            low, high = active.model.band("d7", at, level)
            shown = ml_band(active, "d7", at, level)
            assert shown == (max(0, math.ceil(low - 0.5)), math.floor(high + 0.5))
            for k in range(0, 12):
                outside = not shown[0] <= k <= shown[1]
                assert ml_violates(active, level, "d7", float(k), at) == outside, (at, level, k, low, high)
                checked += outside
    assert checked  # some counts are outside some bands
    # Values the fleet reports one time in four each: the model's own band flagged 111 of 10,400 at
    # LOW (1.1 %, for a level meant to flag about 1 in 1,000), the corrected 19; since the per-slot
    # centres and spreads are shrunk by their sampling noise (engine/ml/shrinkage.py) the band
    # flags none of them, and the correction must not add any.
    flagged = {True: 0, False: 0}
    for d, k, at in itertools.product(range(20), (2, 3, 4, 5), np.arange(400.0, 568.0, 1.3)):
        flagged[True] += ml_violates(active, ConfidenceLevel.LOW, f"d{d}", float(k), at)
        flagged[False] += ConfidenceLevel.LOW.reached_by(active.model.judge(f"d{d}", float(k), at))
    assert flagged[True] <= flagged[False] and flagged[True] <= 10, flagged
