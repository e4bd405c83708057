"""ML Detect on small counts (authorization failures, disconnects, connection attempts a window):
their scores sit in clusters, one a whole number, which a tail fit read as a heavy tail and
extrapolated a million-fold (calibration.SMALL_COUNT_SHAPE)."""

from __future__ import annotations

import numpy as np
import pytest

from iotdefender.engine.ml import ConfidenceLevel
from tests.unit.test_ml_sides import DEVICES, trained

HIGH, MEDIUM = ConfidenceLevel.HIGH, ConfidenceLevel.MEDIUM


@pytest.mark.parametrize(("mean", "flood"), [(0.2, 10.0), (0.5, 12.0), (1.0, 20.0)])
def test_a_small_poisson_count_keeps_its_high_edge_near_its_noise(mean: float, flood: float) -> None:
    # HIGH's upper edge was 841, 464 and 104 a window: a flood of 10-20 raised nothing at HIGH.
    model, at = trained(lambda rng, n: rng.poisson(mean, n).astype(np.float64))
    assert model.band("d0", at, HIGH)[1] < 20, model.band("d0", at, HIGH)
    assert model.judge("d0", flood, at) is HIGH


def test_normal_datapoints_of_a_small_count_stay_within_the_stated_shares() -> None:
    # Stated: 1e-4 of datapoints beyond MEDIUM, 2e-6 beyond HIGH; ~100,000 fresh datapoints here.
    model, at = trained(lambda rng, n: rng.poisson(0.2, n).astype(np.float64))
    rng = np.random.default_rng(7)
    levels = [model.judge(f"d{d}", float(v), at + 300 * i)
              for d in range(DEVICES) for i, v in enumerate(rng.poisson(0.2, 2016))]
    assert sum(level in (MEDIUM, HIGH) for level in levels) <= 3 * 1e-4 * len(levels)
    assert sum(level is HIGH for level in levels) <= 2
