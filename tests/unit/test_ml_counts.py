"""ML Detect on small counts (authorization failures, disconnects, connection attempts a window):
their scores sit in clusters, one a whole number, which a tail fit read as a heavy tail and
extrapolated a million-fold (calibration.SMALL_COUNT_SHAPE)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from iotdefender.engine.ml import ConfidenceLevel
from tests.unit.test_ml_sides import DEVICES, trained

HIGH, MEDIUM, LOW = ConfidenceLevel.HIGH, ConfidenceLevel.MEDIUM, ConfidenceLevel.LOW
Draw = Callable[[np.random.Generator, int], npt.NDArray[np.float64]]


@pytest.mark.parametrize(("mean", "flood"), [(0.2, 10.0), (0.5, 12.0), (1.0, 20.0)])
def test_a_small_poisson_count_keeps_its_high_edge_near_its_noise(mean: float, flood: float) -> None:
    # HIGH's upper edge was 841, 464 and 104 a window: a flood of 10-20 raised nothing at HIGH.
    model, at = trained(lambda rng, n: rng.poisson(mean, n).astype(np.float64))
    assert model.band("d0", at, HIGH)[1] < 20, model.band("d0", at, HIGH)
    assert model.judge("d0", flood, at) is HIGH


def poisson(mean: float) -> Draw:
    return lambda rng, n: rng.poisson(mean, n).astype(np.float64)


def negative_binomial(mean: float, size: float) -> Draw:
    return lambda rng, n: rng.negative_binomial(size, size / (size + mean), n).astype(np.float64)


def zero_inflated(mean: float, zeros: float) -> Draw:
    return lambda rng, n: np.where(rng.random(n) < zeros, 0, rng.poisson(mean, n)).astype(np.float64)


@pytest.mark.parametrize("draw", [poisson(0.2), poisson(3.0), negative_binomial(3.0, 2.0), zero_inflated(3.0, 0.3)],
                         ids=["poisson-0.2", "poisson-3", "negative-binomial-3", "zero-inflated-3"])
def test_normal_datapoints_of_a_small_count_stay_within_the_stated_shares(draw: Draw) -> None:
    # Stated: 1e-3 of datapoints beyond LOW, 1e-4 beyond MEDIUM, 2e-6 beyond HIGH; ~100,000 fresh
    # datapoints here.
    model, at = trained(draw)
    fresh = draw(np.random.default_rng(7), DEVICES * 2016)
    levels = [model.judge(f"d{i // 2016}", float(v), at + 300 * (i % 2016)) for i, v in enumerate(fresh)]
    assert sum(level is not None for level in levels) <= 1.5 * 1e-3 * len(levels)
    assert sum(level in (MEDIUM, HIGH) for level in levels) <= 3 * 1e-4 * len(levels)
    assert sum(level is HIGH for level in levels) <= 2


@pytest.mark.parametrize(("draw", "edges"), [
    (poisson(2.0), (8, 9, 11)), (poisson(3.0), (10, 11, 14)), (negative_binomial(3.0, 2.0), (17, 22, 30))],
    ids=["poisson-2", "poisson-3", "negative-binomial-3"])
def test_a_count_that_varies_gets_edges_near_its_own_tail_not_a_normal_one(draw: Draw, edges: tuple[int, ...]) -> None:
    """Above its centre a count's lightest tail is a Poisson's, not the normal's nor the floors'
    (discrete.poisson_scores): those put a count of 2's edges at 14, 19 and 31 (LOW, MEDIUM, HIGH)
    where its true ones are 8, 9 and 11 (``edges``: the counts beyond which a thousandth, a ten-thousandth and
    two millionths of its windows lie), and a negative binomial count of 3's HIGH at 87 for 30."""
    model, at = trained(draw)
    for level, edge in zip((LOW, MEDIUM, HIGH), edges):
        upper = model.band("d0", at, level)[1]
        assert edge - 1 <= upper < 1.7 * edge, (level, upper, edge)
    assert model.judge("d0", 5.0 * edges[2], at) is HIGH


def test_a_count_that_does_not_vary_keeps_its_floors() -> None:
    """Three listening ports in every window: no tail to read, so a fourth is MEDIUM, not HIGH, as
    the floors mean a change never seen in training to be (discrete.varies)."""
    model, at = trained(lambda rng, n: np.full(n, 3.0))
    assert model.judge("d0", 4.0, at) is MEDIUM
    assert model.judge("d0", 6.0, at) is HIGH
