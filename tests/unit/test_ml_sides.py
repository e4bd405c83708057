"""ML Detect's thresholds on each side of the centre (calibration.symmetric): on the log scale a
metric's noise is often longer on one side, and that side must not widen the other."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from iotdefender.engine.ml import ConfidenceLevel, TrainingData, TrainingSettings, train
from iotdefender.engine.ml.model import BehaviorModel

START, STEP = 1_800_000_000.0, 300.0
DEVICES, DAYS = 50, 7
HIGH = ConfidenceLevel.HIGH


def fleet(values: np.ndarray) -> TrainingData:
    per = len(values) // DEVICES
    times = np.tile(START + np.arange(per) * STEP, DEVICES)
    return TrainingData(np.repeat(np.arange(DEVICES, dtype=np.int32), per), [f"d{i}" for i in range(DEVICES)],
                        times, values)


def trained(draw) -> tuple[BehaviorModel, float]:  # type: ignore[no-untyped-def]
    n = DEVICES * int(DAYS * 86_400 / STEP)
    data = fleet(draw(np.random.default_rng(1), n))
    last = float(data.time.max())
    return train(data, trained_at=last, settings=TrainingSettings()), last + 3_600


def test_a_percentage_with_normal_noise_gets_an_upper_edge_of_its_own() -> None:
    # 35 +- 4 %: on the log scale its lower tail is the longer (log 23 is further below log 35 than
    # log 47 above), and mirrored it put HIGH's upper edge at 72 % (9 standard deviations) here.
    model, at = trained(lambda rng, n: np.clip(35 + 4 * rng.normal(size=n), 0, 100))
    low, high = model.band("d0", at, HIGH)
    assert 55 < high < 65, (low, high)
    assert 10 < low < 20, (low, high)
    assert model.thresholds("d0")[HIGH] < model.thresholds("d0", below=True)[HIGH]
    assert model.judge("d0", 65.0, at) is HIGH  # 7.5 standard deviations above: normal before
    assert model.judge("d0", 47.0, at) is None  # 3 above


def test_a_count_with_a_few_zeros_does_not_take_a_flood_for_normal() -> None:
    # 3 messages a window, none in 4 % of them: the zeros are far below 3 on the log scale, and
    # mirrored they made the upper edge at HIGH 183 messages here, so a 20-fold flood (60) was normal.
    model, at = trained(lambda rng, n: np.where(rng.random(n) < 0.04, 0.0, 3.0))
    assert model.band("d0", at, HIGH)[1] < 20
    assert model.judge("d0", 60.0, at) is HIGH
    assert model.judge("d0", 0.0, at) is None  # the zeros are normal
    assert model.judge("d0", 3.0, at) is None


def test_a_poisson_count_keeps_its_upper_edge_near_its_noise() -> None:
    # Poisson(7.5): HIGH's upper edge was 10,276 here (a 10-fold count was LOW on 200 devices x 14 days).
    model, at = trained(lambda rng, n: rng.poisson(7.5, n).astype(np.float64))
    assert model.band("d0", at, HIGH)[1] < 60
    assert model.judge("d0", 75.0, at) is HIGH


def test_symmetric_noise_keeps_one_threshold_for_both_sides() -> None:
    model, at = trained(lambda rng, n: 2_000 * np.exp(0.3 * rng.normal(size=n)))
    assert model.thresholds("d0") == model.thresholds("d0", below=True)
    assert model.summary().thresholds == model.summary().thresholds_below


def test_a_model_stored_before_sides_is_read_with_its_thresholds_on_both() -> None:
    model, at = trained(lambda rng, n: np.clip(35 + 4 * rng.normal(size=n), 0, 100))
    stored = msgspec.msgpack.decode(model.to_bytes())
    assert stored["version"] == 2 and len(stored["cohort_thresholds"][0]) == 6
    stored["version"] = 1
    stored["cohort_thresholds"] = [row[:3] for row in stored["cohort_thresholds"]]
    del stored["summary"]["thresholds_below"]
    old = BehaviorModel.from_bytes(msgspec.msgpack.encode(stored))
    assert old.thresholds("d0") == old.thresholds("d0", below=True) == model.thresholds("d0")
    assert old.summary().thresholds_below == {}
    assert old.band("d0", at, HIGH)[1] == pytest.approx(model.band("d0", at, HIGH)[1])
    stored["version"] = 3
    with pytest.raises(ValueError, match="format 3"):
        BehaviorModel.from_bytes(msgspec.msgpack.encode(stored))


def test_the_heavier_side_is_no_lower_than_both_sides_together() -> None:
    # The simulator's bytes, normal noise in bytes (longer below on the log scale), 20 devices x
    # 1,000 datapoints: read from its half of the scores alone, the lower side's HIGH came out at 6.1
    # in this training (6.4 for both sides together) and 22 of 2M fresh normal datapoints reached it,
    # where its half of HIGH's share is 2.
    from bench.ml_small import simulator_fleet

    training, fresh = simulator_fleet(20, 1_000, 100_000, 1)
    model = train(training, trained_at=float(training.time.max()), settings=TrainingSettings())
    high = model.levels(fresh) >= 2
    assert not (high & (fresh.value > 40_000)).any()
    assert int(np.count_nonzero(high)) <= 10
    assert model.thresholds("device-0000", below=True)[HIGH] > model.thresholds("device-0000")[HIGH]
