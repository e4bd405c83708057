"""The fleet's thresholds (devices without their own band) on a thin, short training: one device
at another level is a cluster among the fleet's largest scores, not a tail to extrapolate."""

from __future__ import annotations

import numpy as np
import pytest

from iotdefender.engine.ml import ConfidenceLevel, SeasonalClock, TrainingData, TrainingSettings, train

START = 1_700_000_000.0


@pytest.mark.parametrize("per_device, jumped", [(6, 4), (6, 6), (34, 17)])
def test_one_device_at_another_level_does_not_blow_up_the_fleets_band(per_device: int, jumped: int) -> None:
    # The outside-in run: --time-scale 30, --ml-training-period 60, 30 devices reporting bytes out
    # every 10 s (the throttle: 300 s / 30), one of them 300x up for most of the window (a jump kept
    # as its new normal by the refresh). No device has 100 datapoints: all are judged against the
    # fleet (cohort 0). Before: HIGH 288-1,865 robust standard deviations, bands of 1e13-1e65 bytes,
    # and a 2,500x jump of another device was normal.
    rng = np.random.default_rng(per_device + jumped)
    devices = 30
    names = [f"dev-{i}" for i in range(devices)]
    device = np.repeat(np.arange(devices, dtype=np.int32), per_device)
    times = START + np.sort(rng.uniform(0, 60, (devices, per_device)), axis=1).ravel()
    level = np.repeat(rng.uniform(1_000, 1_200, devices), per_device)
    values = np.round(level * np.exp(0.05 * rng.standard_normal(len(device))))
    values[per_device - jumped:per_device] *= 300  # dev-0
    model = train(TrainingData(device, names, times, values),
                  trained_at=START + 61, settings=TrainingSettings(clock=SeasonalClock(hour_seconds=120.0)))
    at = START + 90
    assert model.summary().devices_with_own_band == 0
    _, high = model.band("dev-5", at, ConfidenceLevel.HIGH)
    assert high < 1_000 * 1_200  # wide enough for dev-0's 300x, but bytes, not 1e13
    assert model.judge("dev-5", 2_500 * 1_100, at) is ConfidenceLevel.HIGH
    assert model.judge("dev-0", 300 * 1_100, at) is None  # its level is in the fleet's band


@pytest.mark.parametrize("count", [1_000, 3_000])
def test_a_heavy_tail_keeps_its_fitted_thresholds(count: int) -> None:
    """Student-t noise (5 degrees of freedom) of fleet-judged devices: its largest scores are the
    end of a tail, not a cluster apart, so the thresholds fitted beyond them stand."""
    from iotdefender.engine.ml import calibration

    rng = np.random.default_rng(count)
    scores = np.abs(rng.standard_t(5, count)).astype(np.float32) / 0.727 * 0.6745  # in robust SDs
    shares, floors = [1e-3, 1e-4, 2e-6], [3.0, 3.5, 4.5]
    fitted = calibration.thresholds(scores, shares, floors)
    assert calibration.within_reach(fitted, scores, shares, floors) == fitted
    assert fitted[2] > float(scores.max()) + floors[2]  # the cap would have bound: the case it must not touch


@pytest.mark.parametrize("share_high", [0.05, 0.2, 0.4])
def test_a_new_device_of_a_fleets_minority_kind_is_normal_at_its_kinds_level(share_high: float) -> None:
    # 200 devices with a band of their own, a share of them at 100 times the others' level (gateways
    # among sensors), and new devices of both kinds with 50 datapoints each, judged against the
    # fleet. The fleet's thresholds came from the devices' noise alone (fewer than 1,000 datapoints
    # of devices without a band): every normal datapoint of a new device of the minority kind was
    # HIGH until it had a band of its own.
    rng = np.random.default_rng(3)
    step, per, new = 300.0, 2_016, 50
    high = round(200 * share_high)
    levels = [200_000.0] * high + [2_000.0] * (200 - high) + [2_000.0] * 5 + [200_000.0] * 5
    counts = [per] * 200 + [new] * 10
    device = np.repeat(np.arange(210, dtype=np.int32), counts)
    times = np.concatenate([START + (per - n + np.arange(n)) * step for n in counts])
    values = np.repeat(levels, counts) * np.exp(0.2 * rng.standard_normal(len(device)))
    model = train(TrainingData(device, [f"d{i}" for i in range(210)], times, values),
                  trained_at=float(times.max()), settings=TrainingSettings())
    assert model.summary().devices_with_own_band == 200
    at = float(times.max()) + 3_600
    fresh = np.exp(0.2 * rng.standard_normal(2_000))
    for name, level in (("d200", 2_000.0), ("d205", 200_000.0)):
        judged = [model.judge(name, float(level * f), at) for f in fresh]
        assert sum(j is not None for j in judged) <= 40, (name, share_high)  # was 2,000 of 2,000 HIGH for d205
    # Beyond every kind's level the fleet's band still tells: far below the low kind, above the high.
    assert model.judge("d200", 2_000.0 / 50, at) is ConfidenceLevel.HIGH
    assert model.judge("d205", 200_000.0 * 5, at) is ConfidenceLevel.HIGH
