"""Tail cohorts: devices whose kurtosis tells their tail apart from normal noise as heavier never
share a cohort with near-normal devices (calibration.Layout)."""

from __future__ import annotations

import numpy as np
import pytest

from iotdefender.engine.ml import ConfidenceLevel, TrainingSettings, calibration, train

from tests.unit.test_ml_tails import fleet


@pytest.mark.parametrize("sampled", [False, True])
def test_devices_with_normal_noise_are_never_judged_by_a_student_t_cohorts_high_threshold(sampled: bool) -> None:
    # 400 devices, every tenth with Student-t noise: 16 equal cohorts of 25 put the boundary inside
    # the second heaviest (10 normal devices beside 15 Student-t ones), whose HIGH threshold is ~17.
    data, heavy = fleet()
    settings = TrainingSettings(max_datapoints=len(heavy) * 290) if sampled else TrainingSettings()
    model = train(data, trained_at=float(data.time.max()), settings=settings)
    high = np.array([model.thresholds(name)[ConfidenceLevel.HIGH] for name in data.devices])
    assert high[~heavy].max() < 6.0
    assert high[heavy].min() > 10.0


def test_the_layout_gives_the_heavy_tails_cohorts_of_their_own() -> None:
    rng = np.random.default_rng(3)
    n, count = 2_000, np.full(2_000, 4_000)
    se = np.sqrt(24 / 4_000)
    members = np.ones(n, dtype=bool)
    heavy = np.arange(n) % 10 == 0
    # Sampling noise alone around 3, a tenth of the devices far heavier: two of 16 cohorts for the
    # heavy ones (their share, rounded), the rest for the near-normal ones.
    kurtosis = np.where(heavy, 6.0 + rng.random(n), 3.0 + se * rng.standard_normal(n))
    layout = calibration.Layout(calibration.heavier_than_normal(kurtosis, count), count, members, 16)
    assert layout.heavy.tolist() == heavy.tolist()
    assert layout.counts == (14, 2) and layout.n_cohorts == 16
    cohort = layout.cohorts(kurtosis, members)
    assert set(cohort[~heavy].tolist()) == set(range(1, 15)) and set(cohort[heavy].tolist()) == {15, 16}
    # Plain ranks put the boundary between the two kinds inside a cohort (the 10 % heaviest are
    # 1.6 cohorts of 16).
    plain = calibration.cohorts(kurtosis, members, 16)
    assert set(plain[heavy].tolist()) == {15, 16} and 15 in plain[~heavy].tolist()
    # Another split of the same devices (the pool's half of the scores) follows the same layout.
    other = heavy.copy()
    other[1] = True
    assert layout.cohorts(kurtosis, members, other)[1] in (15, 16)
    # With a few hundred values a device the test cannot tell such tails apart reliably: ranks alone.
    assert calibration.Layout(calibration.heavier_than_normal(kurtosis, count), np.full(n, 384), members, 16).counts == (16, 0)
    # Lighter than normal is not told apart; one kind alone, or one cohort: ranked together, as before.
    assert calibration.Layout(calibration.heavier_than_normal(np.where(heavy, 1.8, kurtosis), count), count, members, 16).counts == (16, 0)
    assert calibration.Layout(np.ones(n, dtype=bool), count, members, 16).counts == (0, 16)
    assert calibration.Layout(calibration.heavier_than_normal(kurtosis, count), count, members, 1).counts == (1, 0)
    assert calibration.Layout(calibration.heavier_than_normal(kurtosis, count), count, members, 2).counts == (1, 1)
