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


def test_residual_sums_slots_are_first_ofs_whatever_the_order_of_the_times() -> None:
    """The loop carries the start of the week from one datapoint to the next (a device's come in time
    order); times out of order, weeks apart or years apart take the division, with the same slots."""
    rng = np.random.default_rng(6)
    clock = SeasonalClock()
    lengths = np.array([4_000, 0, 1, 3_000, 2_500], dtype=np.int64)
    times = np.concatenate([np.sort(clock.origin + 2_900 * 7 * 86_400 + rng.uniform(0, 21 * 86_400, k))
                            for k in lengths])
    times[10:2_000] = rng.permutation(times[10:2_000])  # out of order within a device
    times[5_000:5_020] += 86_400 * 365 * 3  # years later
    times[6_000:6_010] -= 86_400 * 365 * 30  # before the origin of the epoch's first Monday + 2,900 weeks
    n = len(times)
    y = rng.normal(8, 1, n).astype(np.float32)
    table = rng.normal(8, 1, (len(lengths), clock.slots)).astype(np.float32)
    first, fraction, residual = np.empty(n, np.int32), np.empty(n, np.float32), np.empty(n, np.float32)
    kernels.residual_sums(y, times, lengths, table, np.full(len(lengths), 0.5, np.float32), 1 / clock.slot_seconds,
                          clock.origin / clock.slot_seconds + 0.5, first, fraction, residual,
                          np.zeros(table.shape), np.zeros(table.shape))
    expected_first, expected_fraction = clock.first_of(times)
    assert np.array_equal(first, expected_first)
    assert np.array_equal(fraction, expected_fraction)


def test_llvm_is_mapped_before_numba_is_imported() -> None:
    """The first compiled call maps llvmlite's library with the GIL let go, before ``import numba``
    would map it holding the GIL (1.7-2.1 s of a service's event loop at its first model build;
    bench/ml_first_import.py). A change of llvmlite's layout would silently undo that: checked in
    a fresh process, where nothing has imported numba yet."""
    import subprocess
    import sys

    probe = ("import sys\n"
             "from iotdefender.engine.ml import kernels\n"
             "assert 'numba' not in sys.modules and 'libllvmlite' not in open('/proc/self/maps').read()\n"
             "kernels._load_llvm_without_the_gil()\n"
             "print('libllvmlite' in open('/proc/self/maps').read(), 'numba' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]
