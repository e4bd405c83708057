"""A population of values held as sorted runs, and numpy's percentile of it without merging them.

Cluster mode's fleet-wide threshold is the percentile of every device's value of a window, and the
values arrive from each detect node in turn (cluster/fleet_statistics.py). ``np.percentile`` over
their concatenation at each arrival cost the whole population each time: at a 10M fleet on 32
detect nodes, 9.1 s of the detection thread a window and series (bench/README.md). Each node's
values are sorted once when they arrive instead, and the percentile is found from the sorted runs
by counting (``np.searchsorted``): a few thousand binary searches, whatever the population.

The answer is ``np.percentile``'s (method ``linear``), the same float (a zero's sign aside: numpy's
own sort does not keep it either): the two order statistics it
interpolates between are found exactly, and the interpolation repeats numpy's own arithmetic
(``numpy/lib/_function_base_impl.py``: ``_get_indexes``, ``_get_gamma``, ``_lerp``; numpy is
pinned in pyproject.toml, and tests/unit/test_sorted_runs.py compares the two on random
populations). A hand-written selection rather than a library's: numpy has no percentile over
several sorted arrays, and a sketch (t-digest, KLL) would not give the one box's threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_SIGN = np.int64(0x7FFF_FFFF_FFFF_FFFF)


def _ordered(value: np.float64) -> int:
    """An int whose order is the float's (IEEE 754 doubles: flip the magnitude bits of negatives)."""
    bits = np.array(value, dtype=np.float64).view(np.int64)[()]
    return int(bits ^ _SIGN) if bits < 0 else int(bits)


def _from_ordered(ordered: int) -> np.float64:
    bits = np.int64(ordered ^ int(_SIGN)) if ordered < 0 else np.int64(ordered)
    return np.float64(np.array(bits, dtype=np.int64).view(np.float64).item())


class SortedRuns:
    """Values as runs each sorted ascending (``np.sort``'s order: NaN last)."""

    def __init__(self, runs: Sequence[np.ndarray]) -> None:
        self._runs = [run for run in runs if len(run)]
        self._size = sum(len(run) for run in self._runs)

    def __len__(self) -> int:
        return self._size

    def values(self) -> np.ndarray:
        """Every value, unsorted (for reading and tests)."""
        return np.concatenate(self._runs) if self._runs else np.empty(0)

    def percentile(self, percent: float) -> float:
        """``float(np.percentile(self.values(), percent))``."""
        if not self._size:
            raise ValueError("the percentile of no values")
        if any(math.isnan(run[-1]) for run in self._runs):
            return math.nan  # numpy's answer whenever a value is NaN
        # numpy: q = true_divide(q, 100); virtual index (n - 1) * q (method "linear").
        virtual = (self._size - 1) * np.true_divide(np.float64(percent), np.float64(100))
        previous_index = int(np.floor(virtual))
        next_index = previous_index + 1
        if virtual >= self._size - 1:
            previous_index = next_index = -1  # numpy's index of the last value, and its gamma below
        elif virtual < 0:
            previous_index = next_index = 0
        gamma = virtual - np.intp(previous_index)
        previous = self._kth(previous_index % self._size)
        following = previous if next_index == previous_index else self._kth(next_index % self._size)
        difference = following - previous
        if gamma >= 0.5:
            return float(following - difference * (1 - gamma))
        return float(previous + difference * gamma)

    def _count_at_most(self, value: np.float64) -> int:
        return sum(int(np.searchsorted(run, value, side="right")) for run in self._runs)

    def _kth(self, k: int) -> np.float64:
        """The value of rank ``k`` (0: the smallest) of all runs together: the smallest value with
        more than ``k`` values at most it, by bisection over the floats' order (64 steps at most)."""
        low = min(_ordered(run[0]) for run in self._runs)
        high = max(_ordered(run[-1]) for run in self._runs)
        while low < high:
            middle = (low + high) // 2
            if self._count_at_most(_from_ordered(middle)) > k:
                high = middle
            else:
                low = middle + 1
        found = _from_ordered(low)
        for run in self._runs:  # a value as stored (-0.0 and 0.0 count alike: either may come back)
            at = int(np.searchsorted(run, found, side="left"))
            if at < len(run) and run[at] == found:
                return np.float64(run[at])
        return found
