"""Calibration (engine/ml/calibration.py) with anomalies inside the training window: the first
model of a behavior has no previous model to leave them out, and HIGH's share (2e-6) is rarer than
the anomalies a window can hold."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from iotdefender.engine.ml import TrainingData, TrainingSettings, calibration, train
from iotdefender.engine.ml.levels import ConfidenceLevel

SHARES, FLOORS = [1e-3, 1e-4, 2e-6], [3.0, 3.5, 4.5]
START, DAY, STEP = 1_800_000_000.0, 86_400.0, 300.0


def test_a_few_planted_spikes_do_not_lift_the_high_threshold() -> None:
    rng = np.random.default_rng(3)
    clean = rng.normal(size=250_000).astype(np.float32)
    spiky = clean.copy()
    spiky[rng.choice(len(spiky), 8, replace=False)] = rng.uniform(6.0, 15.0, 8)  # 3.2e-5 of the scores, all above
    high_clean = calibration.thresholds(clean, SHARES, FLOORS)[2]
    high_spiky = calibration.thresholds(spiky, SHARES, FLOORS)[2]
    assert high_clean == pytest.approx(4.75, abs=0.1)
    assert high_spiky == pytest.approx(high_clean, abs=0.6)  # 13.2 before outliers were left out of the fit
    # A few anomalies above do not make the sides differ (calibration.symmetric): below, the same.
    assert calibration.thresholds(spiky, SHARES, FLOORS)[5] == high_spiky


def test_thresholds_read_far_out_of_few_scores_are_reached_on_average_about_as_rarely_as_stated() -> None:
    # A tail cohort of 5,500 calibrating scores (200 devices x 384 datapoints make seven) reads HIGH's
    # 2e-6 from a tail fit on its largest 275, 25,000 times further out than they reach. Exponential
    # scores (no floor binds: their 2e-6 quantile is 13.1): over 100 draws, the point estimate's
    # thresholds were reached 5.95 times as often as stated on average at HIGH, 1.50 at MEDIUM
    # (now 1.14 and 1.24: the fit's threshold u and the moments' bias are not accounted for).
    rng = np.random.default_rng(5)
    reached = np.zeros(3)
    for _ in range(100):
        scores = (rng.exponential(1.0, 5_500) * rng.choice([-1.0, 1.0], 5_500)).astype(np.float32)  # Laplace
        reached += np.exp(-np.array(calibration.thresholds(scores, SHARES, FLOORS)[:3]))
    ratio = reached / 100 / np.array(SHARES)
    assert ratio[2] < 2.0, ratio
    assert ratio[1] < 1.4, ratio
    assert ratio[0] > 0.7, ratio  # LOW reads its quantile directly from 5.5 scores beyond it: not moved far


def test_a_heavy_tail_still_gets_a_high_threshold_far_out() -> None:
    rng = np.random.default_rng(4)
    heavy = rng.standard_t(4, size=250_000).astype(np.float32)  # true 2e-6 quantile of |t|: 40.3
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


def test_the_devices_crowding_a_cohorts_tail_are_found_and_a_clean_cohort_has_none() -> None:
    rng = np.random.default_rng(1)
    devices, per = 125, 1_300
    owner = np.repeat(np.arange(devices), per)
    clean = np.abs(rng.normal(size=devices * per)).astype(np.float32)
    crowded = clean.copy()
    for d in range(5):  # 4 % of the devices, 30 large scores each (a bump most nights)
        crowded[d * per + rng.choice(per, 30, replace=False)] = rng.uniform(5.0, 8.0, 30)
    assert len(calibration.crowding_devices(clean, owner)) == 0
    found = calibration.crowding_devices(crowded, owner)
    assert found.tolist() == [0, 1, 2, 3, 4]
    high_clean = calibration.thresholds(clean, SHARES, FLOORS)[2]
    assert calibration.thresholds(crowded, SHARES, FLOORS)[2] > 15  # what the cohort got before
    rest = crowded[~np.isin(owner, found)]
    assert calibration.thresholds(rest, SHARES, FLOORS)[2] == pytest.approx(high_clean, abs=0.2)


def _bumped_fleet(bumped: int) -> tuple[TrainingData, np.ndarray]:
    """800 devices x 14 days with a daily rhythm, every tenth Student-t; ``bumped`` of the others get
    a bump of 6 standard deviations at an hour of their own every night from day 4 (a new behaviour
    that lasts): many large scores a device, which its successive differences barely show."""
    rng = np.random.default_rng(5)
    n, per = 800, int(14 * DAY / STEP)
    heavy = np.arange(n) % 10 == 0
    t = START + np.arange(per) * STEP
    level = rng.normal(10.0, 0.8, n)
    sigma = np.exp(rng.uniform(np.log(0.05), np.log(0.4), n))
    noise = rng.standard_normal((n, per))
    noise[heavy] = rng.standard_t(5, (int(heavy.sum()), per)) / np.sqrt(5 / 3)
    chosen = np.zeros(0, dtype=np.int64)
    if bumped:
        chosen = rng.choice(np.flatnonzero(~heavy), bumped, replace=False)
        hour = (t - START) % DAY / 3_600.0
        away = (hour[None, :] - rng.uniform(0, 24, bumped)[:, None] + 12) % 24 - 12
        noise[chosen] += 6.0 * np.exp(-0.5 * (away / 0.5) ** 2) * (t >= START + 4 * DAY)[None, :]
    y = level[:, None] + 0.5 * np.sin(t / DAY * 2 * np.pi)[None, :] + sigma[:, None] * noise
    data = TrainingData(np.repeat(np.arange(n, dtype=np.int32), per), [f"thing-{i}" for i in range(n)],
                        np.tile(t, n), np.expm1(y).ravel())
    return data, chosen


def test_a_sampled_window_with_nightly_bumps_on_some_devices_keeps_clean_high_thresholds() -> None:
    # Sampled (a quarter of the datapoints) and grouped by device: the cohorts come from the
    # successive differences (tails.py); 4 cohorts of 200 devices, as 16 of a 3,200-device fleet.
    settings = TrainingSettings(max_datapoints=1_040_000, tail_cohorts=4)
    high = ConfidenceLevel.HIGH.value
    clean = train(_bumped_fleet(0)[0], trained_at=START + 14 * DAY, settings=settings)
    data, chosen = _bumped_fleet(40)
    bumped = train(data, trained_at=START + 14 * DAY, settings=settings)
    assert bumped.summary().datapoints_used < bumped.summary().datapoints / 3
    assert clean.summary().thresholds[high] < 5.0
    # Before the crowding devices left the cohorts' tails: 4.78 -> 7.17; found by the sample's
    # scores alone 5.01, with the counts from all datapoints 4.81.
    assert bumped.summary().thresholds[high] == pytest.approx(clean.summary().thresholds[high], abs=0.2)
    # The bumped devices found crowding got a cohort of their own, with thresholds their nights reach.
    theirs = [bumped.thresholds(data.devices[d])[ConfidenceLevel.HIGH] for d in chosen.tolist()]
    assert np.median(theirs) > clean.summary().thresholds[high] + 1


def test_devices_with_many_datapoints_far_off_their_fit_are_found_by_their_counts() -> None:
    rng = np.random.default_rng(2)
    devices = 600
    outside = np.full(devices, 3_900, dtype=np.int64)
    beyond = rng.poisson(3_900 * 6e-5, devices).astype(np.int64)  # normal noise beyond 4 spreads
    cohort = (1 + np.arange(devices) % 3).astype(np.uint8)
    tested = np.ones(devices, dtype=bool)
    assert not calibration.crowding_by_counts(beyond, outside, cohort, tested).any()
    bumped = beyond.copy()
    bumped[:30] += rng.integers(20, 120, 30)  # a bump most nights: 5 % of the devices
    found = calibration.crowding_by_counts(bumped, outside, cohort, tested)
    assert found[:30].all() and not found[30:].any()
    tested[:3] = False  # devices of a cohort not tested (heavy tails) are never found
    assert not calibration.crowding_by_counts(bumped, outside, cohort, tested)[:3].any()


def test_a_hidden_share_of_heavy_tails_lifts_the_thresholds_to_the_mixtures_quantiles() -> None:
    # 6,000 scores of a normal |z| with 1 % of devices whose tail is Student-t (5 degrees of freedom,
    # unit variance) among them: the mixture reaches HIGH's 2e-6 far further out than the normal part.
    rng = np.random.default_rng(3)
    normal = np.abs(rng.standard_normal(6_000)).astype(np.float32)
    heavy = np.abs(rng.standard_t(5, 6_000) / np.sqrt(5 / 3)).astype(np.float32)
    shares, floors = [1e-3, 1e-4, 2e-6], [0.0, 0.0, 0.0]

    def mixture_beyond(x: float) -> float:
        theta = math.atan(x * math.sqrt(5 / 3) / math.sqrt(5))
        c = math.cos(theta)
        student = 1 - 2 / math.pi * (theta + math.sin(theta) * (c + 2 / 3 * c ** 3))
        return 0.99 * math.erfc(x / math.sqrt(2)) + 0.01 * student

    plain = calibration.thresholds(normal, shares, floors)
    mixed = calibration.mixed_thresholds(normal, heavy, 0.01, shares, floors)
    assert mixture_beyond(plain[2]) > 4 * 2e-6  # the normal part's HIGH: passed far more often than stated
    for share, threshold in zip(shares, mixed):
        assert 0.3 * share < mixture_beyond(threshold) < 3 * share, (share, threshold)
    assert calibration.mixed_thresholds(normal, heavy, 0.0, shares, floors) == pytest.approx(plain, rel=1e-6)


def test_the_kurtosis_of_a_nearly_constant_device_tells_nothing_and_warns_nothing() -> None:
    """An operator's trial found "overflow encountered in divide" here in the service's log."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        told = calibration.heavier_than_normal(np.array([1e308, 3.0, np.nan]), np.array([1_000_000, 0, 10]))
    assert told.tolist() == [False, False, False]
