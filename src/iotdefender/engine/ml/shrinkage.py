"""How much of what training estimates per slot of the week is signal, when datapoints are few.

A model trained on ~400-1,000 datapoints a device over a week and a bit (the README's ML recipe:
one to three datapoints per device and half-hour slot) estimates 336 fleet centres, 336 slot
multipliers of the spread and a rank-16 basis of rhythms from data that hold mostly noise. Taken
as they come, they fit the training window's noise: on 20 devices of the simulator's bytes out (no
rhythm at all) each device's centre wandered over the week by 0.11 on the log scale against noise
of 0.127, slot multipliers ranged 0.28-1.85, and fresh normal datapoints reached HIGH at 4.7 %
instead of 2e-6 (bench/README.md, "ML Detect with few datapoints"). Each estimate is kept only as
far as it stands out of its own sampling noise:

* ``toward``: per-slot values shrunk towards their common value by the share of their spread
  across slots that is not sampling noise (an empirical-Bayes posterior mean, James-Stein);
* ``supported_rank``: the fleet's rhythms (an SVD of device-slot means) only as many as have a
  singular value above the optimal hard threshold for noise of that size (Gavish and Donoho,
  "The optimal hard threshold for singular values is 4/sqrt(3)", 2014) — with 20 devices, rank
  16 spanned nearly every device's own noise, so each one's "rhythm" was its noise;
* ``tail_cohorts``: no more tail cohorts than the devices and scores can fill: a cohort of one
  device read HIGH's 2e-6 from its own 200 scores.

With the benchmark fleet's 4,032 datapoints a device (12 a slot) the sampling noise is far below
the rhythms, and nothing moves.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

# A tail cohort pools at least this many devices with their own band (so that no one device's luck
# in its training window sets its cohort's tail) and this many calibrating scores (the tail fit reads
# the largest 5 %: 250). Fewer, and cohorts split by noisy kurtosis get thresholds from half the
# scores each: on 20 simulator devices x 400 datapoints, HIGH was reached 15.5 times as often as
# stated with 8 and 2,000 (2 cohorts), 4.8 times with one cohort (bench/README.md).
COHORT_DEVICES = 20
COHORT_SCORES = 5_000
# The variance of the log of a median absolute deviation of n normal datapoints is about this / n
# (the median of |z| is 0.6745, where |z|'s density is 0.6356: 1 / (4 n 0.6356^2 0.6745^2)).
LOG_MAD_NOISE = 1.36
# Per-slot values that would all keep this much of their difference from the mean stay as they are
# (the benchmark fleet's keep 0.9996 and more).
_NEGLIGIBLE = 0.99


def toward(values: npt.NDArray[np.float64], noise: npt.NDArray[np.float64],
           weights: npt.NDArray[np.float64] | None = None) -> npt.NDArray[np.float64]:
    """``values`` (one per slot) shrunk towards their weighted mean, each by noise / (noise + signal):
    ``noise`` its sampling variance, the signal the variance across slots beyond the mean noise."""
    w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
    # A slot with no datapoints behind it (infinite noise) has no say and goes to the mean.
    known = (w > 0) & np.isfinite(noise)
    if not known.any():
        return values
    mean = float(np.average(values[known], weights=w[known]))
    signal = max(float(np.average((values[known] - mean) ** 2, weights=w[known]))
                 - float(np.average(noise[known], weights=w[known])), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = np.where(~np.isfinite(noise), 0.0, np.where(signal + noise > 0, signal / (signal + noise), 1.0))
    if keep.min() >= _NEGLIGIBLE:
        return values  # the same array: nothing to redo downstream
    result: npt.NDArray[np.float64] = mean + keep * (values - mean)
    return result


def per_count(variance: npt.NDArray[np.float64] | float, counts: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The sampling variance of a statistic of ``counts`` datapoints with ``variance`` for one:
    variance / counts, infinite where there are none (``toward`` sends those to the mean)."""
    numerator = np.broadcast_to(np.asarray(variance, dtype=np.float64), counts.shape)
    result: npt.NDArray[np.float64] = np.divide(numerator, counts, out=np.full(counts.shape, np.inf),
                                                where=counts > 0)
    return result


def supported_rank(whitened: npt.NDArray[np.float64], rank: int) -> int:
    """How many of the first ``rank`` components of ``whitened`` [rows, columns] (noise of unit
    variance per entry) stand above the noise: singular values over Gavish and Donoho's optimal
    hard threshold lambda(beta) sqrt(larger dimension), beta the aspect ratio."""
    rows, columns = whitened.shape
    if rank == 0 or rows == 0 or columns == 0:
        return 0
    small, large = sorted((rows, columns))
    beta = small / large
    threshold = math.sqrt(2 * (beta + 1) + 8 * beta / (beta + 1 + math.sqrt(beta * beta + 14 * beta + 1)))
    limit = threshold * math.sqrt(large)
    singular = np.linalg.svd(whitened, compute_uv=False)
    return min(rank, int(np.count_nonzero(singular > limit)))


def tail_cohorts(wanted: int, devices: int, scores: int) -> int:
    """No more than ``wanted`` cohorts, each of at least ``COHORT_DEVICES`` devices and
    ``COHORT_SCORES`` scores (one at least)."""
    return max(1, min(wanted, devices // COHORT_DEVICES, scores // COHORT_SCORES))
