"""engine/ml/kernels.py's compiled loops that replaced numpy expressions with the same bytes, against
those expressions (refit.py's pass, the other two loops, is checked by test_ml_pass_reference.py)."""

from __future__ import annotations

import numpy as np

from iotdefender.engine.ml import kernels
from iotdefender.engine.ml.clock import SeasonalClock
from iotdefender.engine.ml.seasonal import NormalEquations


def test_between_all_is_between_at_every_time_and_numpys_arithmetic() -> None:
    rng = np.random.default_rng(3)
    for clock in (SeasonalClock(), SeasonalClock(hour_seconds=36.0, origin=-12_345.5, slots_per_hour=3)):
        slot = clock.slot_seconds
        times = np.concatenate((
            clock.origin + rng.uniform(-3, 5, 20_000) * clock.slots * slot,  # before the origin too
            clock.origin + (np.arange(-700, 700) + 0.5) * slot,  # on slot centres: fraction 0
            clock.origin + np.arange(-700, 700) * slot))
        first, second, fraction = clock.between_all(times)
        assert first.dtype == second.dtype == np.int16 and fraction.dtype == np.float32
        expected = [clock.between(float(t)) for t in times]
        assert first.tolist() == [f for f, _, _ in expected]
        assert second.tolist() == [s for _, s, _ in expected]
        # numpy's version (the one before), which computed the fraction in float64 then rounded it
        position = (times - clock.origin) / slot - 0.5
        floor = np.floor(position)
        assert np.array_equal(fraction, (position - floor).astype(np.float32))


def test_slot_sums_are_bincounts_bytes() -> None:
    rng = np.random.default_rng(4)
    lengths = np.array([5, 0, 3_000, 1, 700], dtype=np.int64)
    slot = rng.integers(0, 336, lengths.sum()).astype(np.int16)
    residual = rng.normal(0, 1, lengths.sum()).astype(np.float32)
    keep = rng.random(lengths.sum()) < 0.9
    sums = np.zeros((len(lengths), 336))
    counts = np.zeros((len(lengths), 336))
    kernels.slot_sums(lengths, slot, residual, keep, sums, counts)
    cells = (np.repeat(np.arange(len(lengths)) * 336, lengths) + slot)[keep]
    assert np.array_equal(sums.ravel(), np.bincount(cells, weights=residual[keep], minlength=len(lengths) * 336))
    assert np.array_equal(counts.ravel(), np.bincount(cells, minlength=len(lengths) * 336))


def test_the_gram_matrices_are_einsums() -> None:
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.normal(size=(336, 6)))[0]
    equations = NormalEquations(basis)
    counts = rng.integers(0, 30, (40, 336)).astype(np.float32)
    triangle = np.empty((40, equations._outer.shape[1]), dtype=np.float32)
    kernels.weighted_rows(counts, equations._outer, triangle)
    np.testing.assert_allclose(triangle, np.einsum("ds,sk->dk", counts, equations._outer), rtol=1e-5, atol=1e-5)
    # and the solve they feed: the least squares of the plain normal equations
    sums = rng.normal(size=(40, 336))
    gram = np.einsum("ds,si,sk->dik", counts.astype(np.float64), basis, basis) + 0.05 * np.eye(6)
    np.testing.assert_allclose(equations.solve(sums, counts.astype(np.float64)),
                               np.linalg.solve(gram, (sums @ basis)[:, :, None])[:, :, 0], rtol=1e-4, atol=1e-6)
