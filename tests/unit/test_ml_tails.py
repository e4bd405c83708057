"""A sampled training set still tells spiky devices from smooth ones, from all their datapoints."""

from __future__ import annotations

import numpy as np
import pytest

from iotdefender.engine.ml import ConfidenceLevel, TrainingData, TrainingSettings, train
from iotdefender.engine.ml import tails

START = 1_800_000_000.0
DAY = 86_400.0
PER_DEVICE = 4_032  # 14 days of 5-minute reports


def fleet(n: int = 400) -> tuple[TrainingData, np.ndarray]:
    """A daily rhythm, levels and noise levels that differ, every tenth device with Student-t noise."""
    rng = np.random.default_rng(5)
    heavy = np.arange(n) % 10 == 0
    t = START + np.arange(PER_DEVICE) * 300.0
    level = rng.normal(10.0, 0.8, n)
    sigma = np.exp(rng.uniform(np.log(0.05), np.log(0.4), n))
    noise = rng.standard_normal((n, PER_DEVICE))
    noise[heavy] = rng.standard_t(5, (int(heavy.sum()), PER_DEVICE)) / np.sqrt(5 / 3)
    y = level[:, None] + 0.5 * np.sin(t / DAY * 2 * np.pi)[None, :] + sigma[:, None] * noise
    data = TrainingData(np.repeat(np.arange(n, dtype=np.int32), PER_DEVICE), [f"thing-{i}" for i in range(n)],
                        np.tile(t, n), np.expm1(y).ravel())
    return data, heavy


def test_sampled_training_puts_the_spiky_devices_into_the_heavy_cohorts() -> None:
    data, heavy = fleet()
    # ~290 datapoints a device, as 100k devices x 14 days within 30 s.
    model = train(data, trained_at=float(data.time.max()), settings=TrainingSettings(max_datapoints=len(heavy) * 290))
    assert model.summary().datapoints_used < len(data) / 10
    high = np.array([model.thresholds(name)[ConfidenceLevel.HIGH] for name in data.devices])
    heaviest = high >= np.quantile(high, 1 - 2 / 16)
    assert heaviest[heavy].mean() >= 0.9  # was 0.58 on the sample's scores
    assert np.quantile(high[~heavy], 0.9) < 6.5  # was 9.8: 5-sigma spikes went unseen


def test_difference_kurtosis_is_normal_for_normal_noise_and_ignores_an_anomaly() -> None:
    rng = np.random.default_rng(1)
    values = np.expm1(8.0 + 0.1 * rng.standard_normal(2 * PER_DEVICE))
    values[100] *= 1e6  # an anomaly inside the training window
    device = np.repeat(np.arange(2, dtype=np.int32), PER_DEVICE)
    assert tails.grouped(device) and not tails.grouped(device[::-1].copy())
    kurtosis, count = tails.difference_kurtosis(device, values, 2, np.array([0.1, 0.1]), cap=5.0,
                                                nonnegative=True)
    assert count.tolist() == [PER_DEVICE - 1, PER_DEVICE - 1]
    assert 2.6 < kurtosis[1] < 3.4
    assert kurtosis[0] < 3.8  # uncapped: 2,000


@pytest.mark.parametrize("signed", [False, True])
def test_difference_kurtosis_matches_a_plain_computation_across_chunks(monkeypatch: pytest.MonkeyPatch,
                                                                       signed: bool) -> None:
    rng = np.random.default_rng(2)
    sizes = np.array([0, 1, 5, 0, 300, 2, 1, 1_000, 0, 37, 1])
    device = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    values = np.expm1(rng.normal(5.0, 0.3, len(device)) + rng.standard_t(3, len(device)) * 0.05)
    if signed:  # a custom metric below zero: the model's log scale is mirrored
        values *= np.where(rng.random(len(device)) < 0.3, -1.0, 1.0)
    spread = rng.uniform(0.05, 0.5, len(sizes))
    monkeypatch.setattr(tails, "_CHUNK", 64)  # devices split over many chunks
    kurtosis, count = tails.difference_kurtosis(device, values, len(sizes), spread, cap=5.0,
                                                nonnegative=not signed)
    for i, n in enumerate(sizes):
        v = values[device == i]
        y = np.copysign(np.log1p(np.abs(v)), v)
        d = np.minimum(np.abs(np.diff(y)) / (np.sqrt(2) * spread[i]), 5.0)
        assert count[i] == max(n - 1, 0)
        expected = (d ** 4).sum() * len(d) / (d ** 2).sum() ** 2 if len(d) and (d ** 2).sum() > 0 else 0.0
        assert kurtosis[i] == pytest.approx(expected, rel=1e-4), i


def test_grouped_sees_a_step_back_anywhere_also_between_its_chunks() -> None:
    n = 2 * tails._GROUPED_CHUNK + 5
    device = np.repeat(np.arange(n // 1000 + 1, dtype=np.int32), 1000)[:n]
    assert tails.grouped(device) and tails.grouped(device[:1]) and tails.grouped(device[:0])
    for at in (1, tails._GROUPED_CHUNK - 1, tails._GROUPED_CHUNK, tails._GROUPED_CHUNK + 1, n - 1):
        broken = device.copy()
        broken[at] = broken[at - 1] - 1
        assert not tails.grouped(broken), at


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_run_moments_leave_out_the_differences_touching_left_out_datapoints_as_a_plain_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.choice([0, 0, 1, 2, 3, 50, 400], 40).astype(np.int64)
    n = int(lengths.sum())
    y = rng.normal(5.0, 0.3, n).astype(np.float32)
    inverse = rng.uniform(1.0, 5.0, len(lengths)).astype(np.float32)
    left_out = np.sort(rng.choice(n, n // 7, replace=False)).astype(np.int64)
    left_out = np.union1d(left_out, [0, n - 1])  # the first and last datapoints too
    out = np.zeros(n, dtype=bool)
    out[left_out] = True
    m2, m4, count = tails.run_moments(y, lengths, inverse, 5.0, out)
    start = 0
    for i, k in enumerate(lengths):
        pairs = [(j, j + 1) for j in range(start, start + k - 1) if not (out[j] or out[j + 1])]
        d = np.array([min(abs(float(y[b]) - float(y[a])) * float(inverse[i]), 5.0) for a, b in pairs])
        assert count[i] == len(pairs), i
        assert m2[i] == pytest.approx((d ** 2).sum(), rel=1e-5, abs=1e-9), i
        assert m4[i] == pytest.approx((d ** 4).sum(), rel=1e-5, abs=1e-9), i
        start += k
