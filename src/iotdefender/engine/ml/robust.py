"""Robust location and spread per group, in linear time over hundreds of millions of values.

Exact per-group medians need a sort (minutes at 400M values); a coarse histogram per group gives
a median and an interquartile range good enough to clip outliers, and clipped moments (the mean
and standard deviation of what lies within a few spreads, corrected for the clipping) then give
precise estimates with ``np.bincount`` — one pass each, no sort. For the few groups of the fleet
(168 hours of the week) on a bounded sample, exact medians are cheap and used instead.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

MAD_TO_STD = 1.4826  # a normal distribution's standard deviation is 1.4826 times its median absolute deviation
IQR_TO_STD = 1 / 1.349
_BINS = 64


def median_by_group(groups: npt.NDArray[np.int16], values: npt.NDArray[np.floating],
                    n_groups: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Exact median per group (NaN for an empty group), and the counts: for a few groups on a sample."""
    order = np.argsort(groups, kind="stable")
    counts = np.bincount(groups, minlength=n_groups).astype(np.int64)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    sorted_values = values[order]
    medians = np.full(n_groups, np.nan)
    for g in range(n_groups):
        if bounds[g + 1] > bounds[g]:
            medians[g] = float(np.median(sorted_values[bounds[g]:bounds[g + 1]]))
    return medians, counts


def clipped_location_and_std(groups: npt.NDArray[np.int32], values: npt.NDArray[np.float32], n_groups: int,
                             *, clip: float = 3.5, rounds: int = 2) -> tuple[npt.NDArray[np.float64],
                                                                              npt.NDArray[np.float64]]:
    """Per group: a location and a standard deviation that outliers (anomalies in training) barely move.

    Starts from each group's histogram median and interquartile range, then ``rounds`` times keeps
    the values within ``clip`` standard deviations and takes their mean and standard deviation
    (the latter corrected for the clipping, as for a normal distribution). Empty groups get NaN.
    """
    location, std = _histogram_median_and_std(groups, values, n_groups)
    correction = _clipped_std_factor(clip)
    for _ in range(rounds):
        low = (location - clip * std).astype(np.float32)
        high = (location + clip * std).astype(np.float32)
        keep = (values >= low[groups]) & (values <= high[groups])
        kept_groups = groups[keep]
        kept = values[keep].astype(np.float64)
        n = np.bincount(kept_groups, minlength=n_groups).astype(np.float64)
        total = np.bincount(kept_groups, weights=kept, minlength=n_groups)
        squares = np.bincount(kept_groups, weights=kept * kept, minlength=n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / n
            variance = np.maximum(squares / n - mean * mean, 0.0)
        usable = n > 1
        location = np.where(usable, mean, location)
        std = np.where(usable, np.sqrt(variance) / correction, std)
    return location, std


def _histogram_median_and_std(groups: npt.NDArray[np.int32], values: npt.NDArray[np.float32],
                              n_groups: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Median and IQR-based standard deviation per group from a shared ``_BINS``-bin histogram.

    The bins span the values' 0.1-99.9 % range (values outside land in the edge bins); within a
    bin the quantile is interpolated. The spread is at least one bin, so clipping keeps the group.
    """
    lo, hi = (float(x) for x in np.quantile(values[:: max(1, len(values) // 1_000_000)], [0.001, 0.999]))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / _BINS
    bins = np.clip(((values - lo) / width).astype(np.int64), 0, _BINS - 1)
    histogram = np.bincount(groups.astype(np.int64) * _BINS + bins, minlength=n_groups * _BINS)
    cumulative = np.cumsum(histogram.reshape(n_groups, _BINS), axis=1).astype(np.float64)
    totals = cumulative[:, -1]

    def quantile(q: float) -> npt.NDArray[np.float64]:
        target = q * totals
        index = np.minimum((cumulative < target[:, None]).sum(axis=1), _BINS - 1)
        rows = np.arange(n_groups)
        below = np.where(index > 0, cumulative[rows, np.maximum(index - 1, 0)], 0.0)
        inside = cumulative[rows, index] - below
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(inside > 0, (target - below) / inside, 0.5)
        return np.asarray(lo + (index + fraction) * width, dtype=np.float64)

    median = quantile(0.5)
    std = np.maximum((quantile(0.75) - quantile(0.25)) * IQR_TO_STD, width)
    empty = totals == 0
    median[empty] = np.nan
    std[empty] = np.nan
    return median, std


def _clipped_std_factor(clip: float) -> float:
    """The standard deviation of a standard normal clipped to ±clip (what clipped moments underestimate by)."""
    mass = math.erf(clip / math.sqrt(2))
    density = math.exp(-clip * clip / 2) / math.sqrt(2 * math.pi)
    return math.sqrt(1 - 2 * clip * density / mass)
