"""Calibration (engine/ml/calibration.py) with anomalies inside the training window: the first
model of a behavior has no previous model to leave them out, and HIGH's share (2e-6) is rarer than
the anomalies a window can hold."""

from __future__ import annotations

import numpy as np
import pytest

from iotdefender.engine.ml import TrainingData, TrainingSettings, calibration, train
from iotdefender.engine.ml.levels import ConfidenceLevel

SHARES, FLOORS = [1e-3, 1e-4, 2e-6], [3.0, 3.5, 4.5]
START, DAY, STEP = 1_800_000_000.0, 86_400.0, 300.0


def test_a_few_planted_spikes_do_not_lift_the_high_threshold() -> None:
    rng = np.random.default_rng(3)
    clean = np.abs(rng.normal(size=250_000)).astype(np.float32)
    spiky = clean.copy()
    spiky[rng.choice(len(spiky), 8, replace=False)] = rng.uniform(6.0, 15.0, 8)  # 3.2e-5 of the scores
    high_clean = calibration.thresholds(clean, SHARES, FLOORS)[2]
    high_spiky = calibration.thresholds(spiky, SHARES, FLOORS)[2]
    assert high_clean == pytest.approx(4.75, abs=0.1)
    assert high_spiky == pytest.approx(high_clean, abs=0.6)  # 13.2 before outliers were left out of the fit


def test_a_heavy_tail_still_gets_a_high_threshold_far_out() -> None:
    rng = np.random.default_rng(4)
    heavy = np.abs(rng.standard_t(4, size=250_000)).astype(np.float32)  # true 2e-6 quantile: 40.3
    high = calibration.thresholds(heavy, SHARES, FLOORS)[2]
    assert 15 < high < 80


def _fleet(spikes: int) -> TrainingData:
    rng = np.random.default_rng(7)
    devices = 200
    times = START + np.arange(int(14 * DAY / STEP)) * STEP
    device = np.repeat(np.arange(devices, dtype=np.int32), len(times))
    y = rng.normal(8.0, 1.0, devices)[device] + rng.normal(0.0, 0.1, len(device))
    if spikes:
        at = rng.choice(devices, spikes, replace=False) * len(times) + rng.integers(0, len(times), spikes)
        y[at] += rng.uniform(0.8, 1.5, spikes)  # 8-15 of the noise's standard deviations
    return TrainingData(device, [f"thing-{i}" for i in range(devices)], np.tile(times, devices), np.expm1(y))


def test_a_first_model_trained_with_spikes_in_its_window_keeps_clean_high_thresholds() -> None:
    settings = TrainingSettings()
    clean = train(_fleet(0), trained_at=START + 14 * DAY, settings=settings)
    spiky = train(_fleet(60), trained_at=START + 14 * DAY, settings=settings)  # 7.4e-5 of the datapoints
    high = ConfidenceLevel.HIGH.value
    assert clean.summary().thresholds[high] < 5.5
    # Before outliers were left out of the tail fit: 4.75 -> 8.29 (the median over tail cohorts).
    assert spiky.summary().thresholds[high] == pytest.approx(clean.summary().thresholds[high], abs=0.5)
