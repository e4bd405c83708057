"""Robust location and spread per group, in linear time over hundreds of millions of values.

Exact per-group medians need a sort (minutes at 400M values); a coarse histogram per group gives
a median and an interquartile range good enough to clip outliers, and clipped moments (the mean
and standard deviation of what lies within a few spreads, corrected for the clipping) then give
precise estimates with ``np.bincount`` — one pass each, no sort. For the few groups of the fleet
(168 hours of the week) on a bounded sample, exact medians are cheap and used instead.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import numpy.typing as npt

MAD_TO_STD = 1.4826  # a normal distribution's standard deviation is 1.4826 times its median absolute deviation
IQR_TO_STD = 1 / 1.349
_BINS = 64
_T = TypeVar("_T", bound=np.generic)


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


def finite(values: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    """``np.nan_to_num(values)``, without its cost when every value is finite already: refit.py
    calls it on a few dozen devices' values 13,000 times at 100k devices, where nan_to_num's own
    work (~15 us a call: finfo look-ups, three masks) was ~4 % of the pass."""
    return values if bool(np.isfinite(values).all()) else np.nan_to_num(values)


class Segments:
    """Datapoints grouped by device, each device's contiguous: per-device sums are ``np.add.reduceat``.

    ``np.bincount`` with weights costs ~10x a sequential reduction on large arrays (random access,
    conversion to float64), and training runs a dozen per-device reductions over tens of millions
    of datapoints, so training sorts its sample by device once (``order``) and reduces segments.
    """

    def __init__(self, counts: npt.NDArray[np.int64]) -> None:
        self.counts = counts
        starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        self._present = counts > 0
        self._starts = starts[self._present]

    @staticmethod
    def order(groups: npt.NDArray[np.int32]) -> npt.NDArray[np.intp] | None:
        """The stable permutation that groups ``groups``; None when they already are (non-decreasing)."""
        if len(groups) < 2 or bool(np.all(groups[1:] >= groups[:-1])):
            return None
        low = np.argsort((groups & 0xFFFF).astype(np.uint16), kind="stable")  # radix sorts: linear time
        high = (groups[low] >> 16).astype(np.uint16)
        return low if not high.any() else low[np.argsort(high, kind="stable")]

    def sum(self, values: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
        """Per group, the sum of its ``values`` (0 for an empty group)."""
        result = np.zeros(len(self.counts))
        if len(self._starts):
            result[self._present] = np.add.reduceat(values, self._starts, dtype=np.float64)
        return result

    def max(self, values: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """Per group, the largest of its ``values`` (0 for an empty group)."""
        result = np.zeros(len(self.counts))
        if len(self._starts):
            result[self._present] = np.maximum.reduceat(values, self._starts)
        return result

    def spread(self, per_group: npt.NDArray[_T]) -> npt.NDArray[_T]:
        """``per_group[group of each datapoint]`` without a gather."""
        result: npt.NDArray[_T] = np.repeat(per_group, self.counts)
        return result


def clipped_location_and_std(segments: Segments, values: npt.NDArray[np.float32], *, clip: float = 3.5,
                             rounds: int = 2,
                             start: tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]] | None = None,
                             ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per group: a location and a standard deviation that outliers (anomalies in training) barely move.

    Starts from ``start`` (location, std) or else each group's histogram median and interquartile
    range, then ``rounds`` times keeps the values within ``clip`` standard deviations and takes
    their mean and standard deviation (the latter corrected for the clipping, as for a normal
    distribution). Empty groups get NaN.
    """
    location, std = _histogram_median_and_std(segments, values) if start is None else (
        np.asarray(start[0], dtype=np.float64), np.asarray(start[1], dtype=np.float64))
    correction = clipped_std_factor(clip)
    for _ in range(rounds):
        base = finite(location).astype(np.float32)
        limit = segments.spread(finite(clip * std).astype(np.float32))
        if not base.any() and not np.signbit(base).any():
            # From a location of +0 (refit.py's every chunk) the values themselves: two passes less.
            keep = np.abs(values) <= limit
            centered = values * keep
        else:
            centered = values - segments.spread(base)
            keep = np.abs(centered) <= limit
            centered *= keep
        del limit
        n = segments.sum(keep)
        total = segments.sum(centered)
        centered *= centered
        squares = segments.sum(centered)
        del centered, keep
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / n
            variance = np.maximum(squares / n - mean * mean, 0.0)
        usable = n > 1
        location = np.where(usable, base + mean, location)
        std = np.where(usable, np.sqrt(variance) / correction, std)
    return location, std


def _histogram_median_and_std(segments: Segments,
                              values: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Median and IQR-based standard deviation per group from a shared ``_BINS``-bin histogram.

    The bins span the values' 0.1-99.9 % range (values outside land in the edge bins); within a
    bin the quantile is interpolated. The spread is at least one bin, so clipping keeps the group.
    """
    lo, hi = (float(x) for x in np.quantile(values[:: max(1, len(values) // 1_000_000)], [0.001, 0.999]))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / _BINS
    n_groups = len(segments.counts)
    bins = np.clip((values - np.float32(lo)) * np.float32(1 / width), 0, _BINS - 1).astype(np.int32)
    bins += segments.spread(np.arange(n_groups, dtype=np.int32) * _BINS)
    histogram = np.bincount(bins, minlength=n_groups * _BINS)
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


def clipped_std_factor(clip: float) -> float:
    """The standard deviation of a standard normal clipped to ±clip (what clipped moments underestimate by)."""
    mass = math.erf(clip / math.sqrt(2))
    density = math.exp(-clip * clip / 2) / math.sqrt(2 * math.pi)
    return math.sqrt(1 - 2 * clip * density / mass)
