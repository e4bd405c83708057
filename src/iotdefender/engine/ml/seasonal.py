"""The daily and weekly rhythm: the fleet's per slot of the week, and each device's own as a few
weights on rhythms the fleet shares.

Devices do not share one rhythm (an office gateway is busy on weekday afternoons in its own time
zone, a backup box at 02:00), so a fleet median alone leaves most of a device's rhythm in its
residuals and widens its band by its whole daily swing. Storing a level per slot and device would
cost 336 numbers per (behavior, device) and needs weeks of data per device; instead the device-slot
means of the fleet are reduced to their ``rank`` main components (an SVD, deterministic), and each
device keeps ``rank`` weights, fitted by ridge least squares on its own datapoints: its rhythm is
``weights @ basis[slot]``. Training fits the weights twice: on all of a device's datapoints, then
on those within a few spreads of that first fit (clipping before any fit would cut the peaks of a
strong rhythm and flatten it). With a rank of 16 the benchmark's 13 distinct rhythms are represented;
a real fleet's cohorts (firmware, site, time zone) behave alike.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from iotdefender.engine.ml.clock import DAYS_PER_WEEK
from iotdefender.engine.ml.robust import Segments, median_by_group

_BASIS_DEVICES = 20_000
_CHUNK_DATAPOINTS = 4_000_000  # device-slot tables are built this many datapoints at a time
_RIDGE = 0.05  # a weight's pull towards 0, in datapoints per slot (a device's Gram matrix is ~ datapoints per slot x I)


class Fallbacks:
    """Per slot of the week: its own statistics, else its slot of the day's, else the whole period's.

    ``counts`` are datapoints per slot of the week in the full training set; a slot with fewer than
    ``enough`` is thin.
    """

    def __init__(self, counts: npt.NDArray[np.floating], enough: float) -> None:
        self.slots = len(counts)
        self.per_day = self.slots // DAYS_PER_WEEK
        day_counts = counts.reshape(DAYS_PER_WEEK, self.per_day).sum(axis=0)
        self.week = counts >= enough
        self.day = ~self.week & (np.tile(day_counts, DAYS_PER_WEEK) >= enough)

    def median(self, slot: npt.NDArray[np.int16], values: npt.NDArray[np.floating],
               default: float | None = None) -> npt.NDArray[np.float64]:
        """Median of ``values`` per slot of the week, with the fallbacks."""
        week, _ = median_by_group(slot, values, self.slots)
        day, _ = median_by_group((slot % self.per_day).astype(np.int16), values, self.per_day)
        whole = float(np.median(values)) if default is None else default
        result: npt.NDArray[np.float64] = np.where(self.week, week, np.where(self.day, np.tile(day, DAYS_PER_WEEK),
                                                                             whole))
        return np.nan_to_num(result, nan=whole)

    def table(self, sums: npt.NDArray[np.float64], counts: npt.NDArray[np.float64]) -> tuple[
            npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Per-device [devices, slots] sums and counts with thin slots replaced by their slot of the day's (or 0)."""
        n = len(sums)
        day_sums = np.tile(sums.reshape(n, DAYS_PER_WEEK, self.per_day).sum(axis=1), DAYS_PER_WEEK)
        day_counts = np.tile(counts.reshape(n, DAYS_PER_WEEK, self.per_day).sum(axis=1), DAYS_PER_WEEK)
        return (np.where(self.week, sums, np.where(self.day, day_sums, 0.0)),
                np.where(self.week, counts, np.where(self.day, day_counts, 0.0)))


def shared_basis(segments: Segments, slot: npt.NDArray[np.int16], residual: npt.NDArray[np.float32],
                 keep: npt.NDArray[np.bool_], eligible: npt.NDArray[np.bool_], fallbacks: Fallbacks,
                 rank: int) -> npt.NDArray[np.float64]:
    """[slots, rank]: the fleet's main rhythms, from the slot means of the ``eligible`` devices (at
    most 20,000, evenly spread, so it is deterministic and quick)."""
    rows = np.flatnonzero(eligible)
    rank = min(rank, len(rows), fallbacks.slots)
    if rank == 0:
        return np.zeros((fallbacks.slots, 0))
    rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), _BASIS_DEVICES)).astype(np.int64)]
    chosen = np.zeros(len(segments.counts), dtype=bool)
    chosen[rows] = True
    means = [np.where(c > 0, s / np.maximum(c, 1), 0.0)[chosen[a:b]]
             for a, b, s, c in _tables(segments, slot, residual, keep, fallbacks)]
    _, _, vt = np.linalg.svd(np.concatenate(means), full_matrices=False)
    basis: npt.NDArray[np.float64] = vt[:rank].T
    # An SVD's signs are arbitrary; fix them so the same data always gives the same bytes.
    basis *= np.where(basis[np.abs(basis).argmax(axis=0), np.arange(rank)] < 0, -1.0, 1.0)
    return basis


def fit_weights(segments: Segments, slot: npt.NDArray[np.int16], residual: npt.NDArray[np.float32],
                keep: npt.NDArray[np.bool_], fallbacks: Fallbacks,
                basis: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """[devices, rank]: each device's weights, ridge least squares on its kept datapoints."""
    slots, rank = basis.shape
    outer = np.einsum("sk,sl->skl", basis, basis).reshape(slots, rank * rank)
    weights = np.zeros((len(segments.counts), rank))
    ridge = _RIDGE * np.eye(rank)
    for a, b, sums, counts in _tables(segments, slot, residual, keep, fallbacks):
        gram = (counts @ outer).reshape(b - a, rank, rank) + ridge
        weights[a:b] = np.linalg.solve(gram, (sums @ basis)[:, :, None])[:, :, 0]
    return weights


def _tables(segments: Segments, slot: npt.NDArray[np.int16], residual: npt.NDArray[np.float32],
            keep: npt.NDArray[np.bool_], fallbacks: Fallbacks) -> Iterator[
                tuple[int, int, npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
    """Per chunk of devices (a, b): their [b - a, slots] residual sums and counts (with the fallbacks)."""
    slots = fallbacks.slots
    ends = np.cumsum(segments.counts)
    a = 0
    while a < len(ends):
        start = int(ends[a - 1]) if a else 0
        b = int(np.searchsorted(ends, start + _CHUNK_DATAPOINTS, side="right"))
        b = max(b, a + 1)
        stop = int(ends[b - 1])
        local = np.repeat(np.arange(b - a, dtype=np.int32) * slots, segments.counts[a:b]) + slot[start:stop]
        mask = keep[start:stop]
        cells = local[mask]
        sums = np.asarray(np.bincount(cells, weights=residual[start:stop][mask], minlength=(b - a) * slots),
                          dtype=np.float64)
        counts = np.bincount(cells, minlength=(b - a) * slots).astype(np.float64)
        table_sums, table_counts = fallbacks.table(sums.reshape(b - a, slots), counts.reshape(b - a, slots))
        yield a, b, table_sums, table_counts
        a = b
