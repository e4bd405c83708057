"""ML Detect on small training sets: one device's rhythm, and small zero-heavy counts."""

from __future__ import annotations

import numpy as np
import pytest

from iotdefender.engine.ml import ConfidenceLevel, TrainingData, TrainingSettings, train
from iotdefender.engine.ml import calibration

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
    low, medium, high = calibration.thresholds(scores, [1e-3, 1e-4, 2e-6], [3.0, 3.5, 4.5])
    assert low < 5 and medium < 6 and high < 7, (low, medium, high)
