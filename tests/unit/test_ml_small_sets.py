"""ML Detect on small training sets: one device's rhythm, and small zero-heavy counts."""

from __future__ import annotations

import numpy as np
import pytest

from iotdefender.engine.ml import ConfidenceLevel, TrainingData, TrainingSettings, train
from iotdefender.engine.ml import calibration
from iotdefender.pipeline.ml_training import ml_settings

START = 1_800_000_000.0
DAY = 86_400.0


def test_one_device_with_a_step_shaped_day_gets_a_band_that_follows_it() -> None:
    times = START + np.arange(5_000) * 300.0
    hour = (times % DAY) / 3600
    rng = np.random.default_rng(3)
    day = (hour >= 8) & (hour < 20)
    values = np.where(day, 100.0, 10.0) * np.exp(rng.normal(0.0, 0.05, len(times)))
    model = train(TrainingData(np.zeros(len(times), np.int32), ["gateway"], times, values),
                  trained_at=float(times[-1]), settings=TrainingSettings())
    midnight = float(times[-1] - times[-1] % DAY + DAY)
    for level in ConfidenceLevel:
        night_low, night_high = model.band("gateway", midnight + 2 * 3600, level)
        day_low, day_high = model.band("gateway", midnight + 13 * 3600, level)
        assert night_low < 10 < night_high < 30, (level, night_low, night_high)
        assert 40 < day_low < 100 < day_high < 250, (level, day_low, day_high)
    assert model.judge("gateway", 100.0, midnight + 2 * 3600) is ConfidenceLevel.HIGH
    assert model.judge("gateway", 10.0, midnight + 13 * 3600) is ConfidenceLevel.HIGH
    assert model.judge("gateway", 100.0, midnight + 13 * 3600) is None


@pytest.mark.parametrize("mean", [0.2, 0.5, 1.0])
def test_a_burst_against_small_zero_heavy_counts_alarms_at_high(mean: float) -> None:
    rng = np.random.default_rng(7)
    n = 140  # five-minute windows of six devices, none with enough for its own band
    device = np.sort(rng.integers(0, 6, n)).astype(np.int32)
    times = START + np.sort(rng.uniform(0, 2 * DAY, n))
    values = np.minimum(rng.poisson(mean, n), 4).astype(np.float64)
    model = train(TrainingData(device, [f"thing-{i}" for i in range(6)], times, values),
                  trained_at=float(times[-1]), settings=TrainingSettings())
    assert model.summary().devices_with_own_band == 0
    assert model.summary().thresholds["HIGH"] < 10  # was 120-175 robust standard deviations
    at = float(times[-1]) + 600
    assert model.band("thing-0", at, ConfidenceLevel.HIGH)[1] < 40
    assert model.judge("thing-0", 50.0, at) is ConfidenceLevel.HIGH
    assert model.judge("thing-0", 100.0, at) is ConfidenceLevel.HIGH
    assert model.judge("thing-0", 0.0, at) is None
    assert model.judge("thing-0", 1.0, at) is None


@pytest.mark.parametrize("counts", [[112, 25, 3, 0, 0], [100, 30, 6, 3, 1]])
def test_a_short_tail_of_tied_scores_is_not_extrapolated_far_beyond_them(counts: list[int]) -> None:
    # 140 scores of a small count: a few distinct values, tied at the top.
    scores = np.repeat(np.array([0.0, 1.4, 2.2, 2.8, 3.2], dtype=np.float32), counts)
    low, medium, high = calibration.thresholds(scores, [1e-3, 1e-4, 2e-6], [3.0, 3.5, 4.5])[:3]
    assert low < 5 and medium < 6 and high < 7, (low, medium, high)


@pytest.mark.parametrize("seed", [1, 4, 5, 6])
def test_a_count_that_makes_up_a_third_of_a_devices_windows_stays_inside_its_low_band(seed: int) -> None:
    # The README's recipe (--time-scale 3600: a 168 s model week, half-hour slots of 0.5 s; cloud-side
    # windows of 300 s / 3600; a 120 s training period): messages sent per window are 1 for most
    # devices most of the time; one device is slower and sends nothing in a third of its windows.
    settings = ml_settings(3600)
    window = 300 / 3600
    rng = np.random.default_rng(seed)
    times = START + np.arange(0, 120, window)
    zero_shares = [0.15] * 7 + [1 / 3]
    values = np.concatenate([(rng.random(len(times)) >= share).astype(np.float64) for share in zero_shares])
    device = np.repeat(np.arange(len(zero_shares), dtype=np.int32), len(times))
    names = [f"device-{i:04d}" for i in range(len(zero_shares))]
    model = train(TrainingData(device, names, np.tile(times, len(zero_shares)), values),
                  trained_at=START + 120, settings=settings)
    slow = names[-1]
    assert abs(float(np.mean(values[device == len(names) - 1] == 0)) - 1 / 3) < 0.03
    low = model.thresholds(slow)[ConfidenceLevel.LOW]
    week = START + 120 + np.arange(0, 168, 0.1)  # every slot of the next model week, seen in training or not
    zero_scores = [model.score(slow, 0.0, at) for at in week]
    # The spread's per-slot multiplier sat on the fleet's 1s in some slots and shrank the band to a
    # quarter there: a 0 scored up to 7.6-10.6 robust standard deviations, judged LOW to HIGH.
    assert max(zero_scores) < low, (max(zero_scores), low)
    assert all(model.judge(slow, 0.0, at) is None for at in week)
    # Not by a band so wide that it sees nothing: a burst of messages is still HIGH.
    assert all(model.judge(slow, 20.0, at) is ConfidenceLevel.HIGH for at in week[::10])


def test_counts_that_are_quieter_at_night_keep_a_narrower_night_band() -> None:
    # What the per-slot multiplier of a count's spread is for: the same level (20 a report) at night
    # from a steady Poisson count, by day from a bursty one. Its shrinkage towards 1 (discrete.py)
    # must leave a real difference between slots.
    rng = np.random.default_rng(2)
    n = 30
    times = START + np.arange(0, 14 * DAY, 300.0)
    hour = (times % DAY) / 3600
    busy = (hour >= 8) & (hour < 20)
    values = np.concatenate([np.where(busy, rng.negative_binomial(2, 2 / 22, len(times)),
                                      rng.poisson(20.0, len(times))) for _ in range(n)]).astype(np.float64)
    device = np.repeat(np.arange(n, dtype=np.int32), len(times))
    model = train(TrainingData(device, [f"thing-{i}" for i in range(n)], np.tile(times, n), values),
                  trained_at=float(times[-1]), settings=TrainingSettings())
    midnight = float(times[-1] - times[-1] % DAY + DAY)
    night, day = midnight + 2 * 3600, midnight + 13 * 3600
    _, night_high = model.band("thing-0", night, ConfidenceLevel.LOW)
    _, day_high = model.band("thing-0", day, ConfidenceLevel.LOW)
    assert 30 < night_high < day_high / 3, (night_high, day_high)
    assert model.judge("thing-0", 80.0, night) is not None
    assert model.judge("thing-0", 80.0, day) is None
