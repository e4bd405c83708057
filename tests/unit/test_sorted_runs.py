"""``SortedRuns.percentile`` is ``np.percentile`` of the runs' values together: the same float, a
zero's sign aside (numpy's own ``np.sort`` does not keep it either)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from iotdefender.engine.sorted_runs import SortedRuns

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the extreme values overflow in numpy too

PERCENTS = [0.0, 0.1, 1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0]


def runs_of(values: list[float], rng: random.Random) -> list[np.ndarray]:
    cuts = sorted(rng.sample(range(len(values) + 1), min(len(values) + 1, rng.randint(0, 5))))
    bounds = [0, *cuts, len(values)]
    return [np.sort(np.array(values[a:b], dtype=float)) for a, b in zip(bounds, bounds[1:])]


def draw(rng: random.Random) -> list[float]:
    size = rng.choice([1, 2, 3, 5, 10, 101, 1000, 5000])
    kind = rng.randrange(5)
    if kind == 0:  # counts with many ties
        return [float(rng.randint(0, 4)) for _ in range(size)]
    if kind == 1:  # heavy tailed, positive
        return [rng.lognormvariate(8, 2) for _ in range(size)]
    if kind == 2:  # both signs, zeros of both signs
        return [rng.choice([-0.0, 0.0, rng.uniform(-1e6, 1e6), -rng.random() * 1e-300]) for _ in range(size)]
    if kind == 3:  # huge and tiny magnitudes, infinities
        return [rng.choice([1e308, -1e308, 5e-324, math.inf, -math.inf, rng.gauss(0, 1)]) for _ in range(size)]
    return [rng.gauss(100, 15) for _ in range(size)]


@pytest.mark.parametrize("seed", range(40))
def test_the_percentile_of_sorted_runs_is_numpys_to_the_bit(seed):
    rng = random.Random(seed)
    for _ in range(25):
        values = draw(rng)
        population = SortedRuns(runs_of(values, rng))
        negative_zero = any(value == 0 and math.copysign(1, value) < 0 for value in values)
        assert len(population) == len(values)
        for percent in [*PERCENTS, rng.uniform(0, 100)]:
            expected = float(np.percentile(np.array(values, dtype=float), percent))
            found = population.percentile(percent)
            same = found == expected and (expected != 0 or math.copysign(1, found) == math.copysign(1, expected)
                                          or negative_zero)
            assert same or (math.isnan(found) and math.isnan(expected)), (seed, percent, found, expected)


def test_a_nan_makes_the_percentile_nan_as_in_numpy():
    population = SortedRuns([np.sort(np.array([1.0, math.nan, 3.0])), np.array([2.0])])
    assert math.isnan(population.percentile(50)) and math.isnan(float(np.percentile([1.0, math.nan, 3.0, 2.0], 50)))


def test_empty_runs_are_left_out_and_no_values_have_no_percentile():
    population = SortedRuns([np.empty(0), np.array([4.0]), np.empty(0)])
    assert len(population) == 1 and population.percentile(90) == 4.0
    with pytest.raises(ValueError):
        SortedRuns([np.empty(0)]).percentile(50)
