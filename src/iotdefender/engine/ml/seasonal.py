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

from iotdefender.engine.ml import kernels, shrinkage
from iotdefender.engine.ml.clock import DAYS_PER_WEEK
from iotdefender.engine.ml.robust import Segments, median_by_group

_BASIS_DEVICES = 20_000
_CHUNK_DATAPOINTS = 4_000_000  # device-slot tables are built this many datapoints at a time
_RHYTHM_COHORTS = 32
RIDGE = 0.05  # a weight's pull towards 0, in datapoints per slot (a device's Gram matrix is ~ datapoints per slot x I)


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
        return np.nan_to_num(self._choose(week, day, whole), nan=whole)

    def counts(self, slot: npt.NDArray[np.int16]) -> npt.NDArray[np.float64]:
        """Per slot of the week, how many of ``slot``'s datapoints its statistic is of (``median``'s)."""
        week = np.bincount(slot, minlength=self.slots).astype(np.float64)
        day = week.reshape(DAYS_PER_WEEK, self.per_day).sum(axis=0)
        return self._choose(week, day, float(len(slot)))

    def mean(self, slot: npt.NDArray[np.int16], values: npt.NDArray[np.floating]) -> tuple[
            npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Mean of ``values`` per slot of the week, with the fallbacks (the whole period's for the
        rest), and how many values each mean is of.

        For values with a few distinct levels (a count's standardised residuals), where a median
        sits on one level or jumps to the next as the mix of a slot moves by one datapoint.
        """
        weights = np.asarray(values, dtype=np.float64)
        week_n = np.bincount(slot, minlength=self.slots).astype(np.float64)
        week = np.bincount(slot, weights=weights, minlength=self.slots) / np.maximum(week_n, 1)
        day_slot = slot % self.per_day
        day_n = np.bincount(day_slot, minlength=self.per_day).astype(np.float64)
        day = np.bincount(day_slot, weights=weights, minlength=self.per_day) / np.maximum(day_n, 1)
        whole = float(weights.mean()) if len(weights) else 0.0
        return self._choose(week, day, whole), self._choose(week_n, day_n, float(len(weights)))

    def _choose(self, week: npt.NDArray[np.float64], day: npt.NDArray[np.float64],
                whole: float) -> npt.NDArray[np.float64]:
        """Per slot of the week: its own ``week`` value, else its slot of the day's, else ``whole``."""
        result: npt.NDArray[np.float64] = np.where(self.week, week,
                                                   np.where(self.day, np.tile(day, DAYS_PER_WEEK), whole))
        return result

    def table(self, sums: npt.NDArray[np.float64], counts: npt.NDArray[np.float64]) -> tuple[
            npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Per-device [devices, slots] sums and counts with thin slots replaced by their slot of the day's (or 0)."""
        if self.week.all():
            return sums, counts
        n = len(sums)
        day_sums = np.tile(sums.reshape(n, DAYS_PER_WEEK, self.per_day).sum(axis=1), DAYS_PER_WEEK)
        day_counts = np.tile(counts.reshape(n, DAYS_PER_WEEK, self.per_day).sum(axis=1), DAYS_PER_WEEK)
        return (np.where(self.week, sums, np.where(self.day, day_sums, 0.0)),
                np.where(self.week, counts, np.where(self.day, day_counts, 0.0)))


def shared_basis(segments: Segments, slot: npt.NDArray[np.int16], residual: npt.NDArray[np.float32],
                 keep: npt.NDArray[np.bool_], eligible: npt.NDArray[np.bool_], fallbacks: Fallbacks,
                 rank: int) -> npt.NDArray[np.float64]:
    """[slots, rank or fewer]: the fleet's main rhythms, from the slot means of the ``eligible``
    devices (at most 20,000, evenly spread, so it is deterministic and quick); only as many as stand
    out of the means' noise (``shrinkage.supported_rank``: 14 of 16 for the benchmark's 2,000
    devices, none for 20 devices without a rhythm)."""
    rows, rank = basis_devices(eligible, rank, fallbacks.slots)
    if rank == 0:
        return np.zeros((fallbacks.slots, 0))
    chosen = np.zeros(len(segments.counts), dtype=bool)
    chosen[rows] = True
    noise = _cell_noise(segments, slot, residual, keep, fallbacks.slots)
    means, whitened = [], []
    for a, b, s, c in _tables(segments, slot, residual, keep, fallbacks):
        means.append(np.where(c > 0, s / np.maximum(c, 1), 0.0)[chosen[a:b]])
        # Each mean over its sampling noise (its device's noise / sqrt(its count)): unit variance.
        whitened.append((s / np.sqrt(np.maximum(c, 1)) / noise[a:b, None])[chosen[a:b]])
    # Only the rhythms that stand out of the means' noise (shrinkage.py): with few datapoints a
    # device-slot mean is mostly noise, and a basis of its top components fits each device's own.
    rank = shrinkage.supported_rank(np.concatenate(whitened), rank)
    return principal_rhythms(np.concatenate(means), rank)


def _cell_noise(segments: Segments, slot: npt.NDArray[np.int16], residual: npt.NDArray[np.float32],
                keep: npt.NDArray[np.bool_], slots: int) -> npt.NDArray[np.float64]:
    """Per device, the standard deviation of its kept ``residual`` within its slots of the week
    (pooled): its noise without its rhythm. Devices with fewer than 10 degrees of freedom get the
    fleet's median."""
    n = len(segments.counts)
    between = np.zeros(n)
    freedom = np.zeros(n)
    for a, b, sums, counts in _tables(segments, slot, residual, keep, None, slots):
        with np.errstate(invalid="ignore", divide="ignore"):
            between[a:b] = np.where(counts > 0, sums * sums / np.maximum(counts, 1), 0.0).sum(axis=1)
        freedom[a:b] = counts.sum(axis=1) - (counts > 0).sum(axis=1)
    kept = np.where(keep, residual, np.float32(0.0))
    total = segments.sum(kept * kept)
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.maximum(total - between, 0.0) / freedom
    enough = (freedom >= 10) & (variance > 0)
    fallback = float(np.median(variance[enough])) if enough.any() else 1.0
    result: npt.NDArray[np.float64] = np.sqrt(np.where(enough, variance, fallback))
    return result


def basis_devices(eligible: npt.NDArray[np.bool_], rank: int, slots: int) -> tuple[npt.NDArray[np.int64], int]:
    """The devices the basis is computed from (at most 20,000 of the ``eligible``, evenly spread)
    and the rank it can have."""
    rows = np.flatnonzero(eligible)
    rank = min(rank, len(rows), slots)
    if rank == 0:
        return rows[:0], 0
    return rows[np.linspace(0, len(rows) - 1, min(len(rows), _BASIS_DEVICES)).astype(np.int64)], rank


def principal_rhythms(means: npt.NDArray[np.float64], rank: int) -> npt.NDArray[np.float64]:
    """[slots, rank]: the main components of [devices, slots] slot means (the right singular vectors,
    signs fixed), as the eigenvectors of their [slots, slots] Gram matrix: an SVD of the means of
    5,000-20,000 devices took ~1 s of CPU at 100k devices, this ~0.1 (the leading components stand
    well apart, so squaring the condition number costs them nothing that shows: bench/README.md)."""
    _, vectors = np.linalg.eigh(means.T @ means)
    basis: npt.NDArray[np.float64] = np.ascontiguousarray(vectors[:, ::-1][:, :rank])
    # An SVD's signs are arbitrary; fix them so the same data always gives the same bytes.
    basis *= np.where(basis[np.abs(basis).argmax(axis=0), np.arange(rank)] < 0, -1.0, 1.0)
    return basis


def fit_weights(segments: Segments, slot: npt.NDArray[np.int16], residual: npt.NDArray[np.float32],
                keep: npt.NDArray[np.bool_], fallbacks: Fallbacks, basis: npt.NDArray[np.float64],
                prior: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
                ) -> npt.NDArray[np.float64]:
    """[devices, rank]: each device's weights, least squares on its kept datapoints.

    With ``prior`` (mean, ridge), both [devices, rank], the fit is pulled towards the mean by the
    ridge (``cohort_prior``); without, by a small ridge towards 0 that only keeps a device with
    empty slots solvable.
    """
    weights = np.zeros((len(segments.counts), basis.shape[1]))
    equations = NormalEquations(basis)
    for a, b, sums, counts in _tables(segments, slot, residual, keep, fallbacks):
        weights[a:b] = equations.solve(sums, counts, None if prior is None else (prior[0][a:b], prior[1][a:b]))
    return weights


class NormalEquations:
    """``fit_weights``' least squares for one ``basis`` [slots, rank], solved per batch of devices
    from their [devices, slots] residual sums and counts (``Fallbacks.table``)."""

    def __init__(self, basis: npt.NDArray[np.float64]) -> None:
        self.basis = basis
        rank = basis.shape[1]
        # The Gram matrices are symmetric: the upper triangle only, in float32 (counts of a few
        # thousand times products of basis entries), a quarter of the work of the whole in float64.
        self._upper, self._lower = np.triu_indices(rank)
        # Row by row in memory (the products come out column by column): weighted_rows' inner loop
        # runs along a row, 6 times quicker than along a column.
        self._outer = np.ascontiguousarray((basis[:, self._upper] * basis[:, self._lower]).astype(np.float32))

    def solve(self, sums: npt.NDArray[np.float64], counts: npt.NDArray[np.float64],
              prior: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None) -> npt.NDArray[np.float64]:
        """[devices, rank]; ``prior`` (mean, ridge) for these devices, else the small ridge."""
        rank = self.basis.shape[1]
        # A compiled loop, not BLAS: training's pass over every datapoint solves once per block
        # of devices (refit.py), and after each BLAS product OpenBLAS's threads spin, waiting for
        # the next: a core's worth of CPU through the whole pass (26 s of CPU at 100k devices with
        # one BLAS thread, 43-49 s with the default two).
        triangle = np.empty((len(counts), len(self._upper)), dtype=np.float32)
        kernels.weighted_rows(np.ascontiguousarray(counts, dtype=np.float32), self._outer, triangle)
        gram = np.empty((len(counts), rank, rank))
        gram[:, self._upper, self._lower] = triangle
        gram[:, self._lower, self._upper] = triangle
        right: npt.NDArray[np.float64] = np.einsum("ds,sk->dk", np.asarray(sums, dtype=np.float64), self.basis)
        diagonal = np.arange(rank)
        if prior is None:
            gram[:, diagonal, diagonal] += RIDGE
        else:
            mean, ridge = prior
            gram[:, diagonal, diagonal] += ridge
            right += ridge * mean
        weights: npt.NDArray[np.float64] = np.asarray(np.linalg.solve(gram, right[:, :, None])[:, :, 0], dtype=np.float64)
        return weights


def cohort_prior(weights: npt.NDArray[np.float64], spread: npt.NDArray[np.floating],
                 datapoints: npt.NDArray[np.floating], eligible: npt.NDArray[np.bool_],
                 slots: int, cohorts: int = _RHYTHM_COHORTS) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(mean, ridge) per device and weight: what its rhythm cohort says its weights are.

    Devices come in cohorts that share a rhythm (a firmware, a site, a time zone), so the first-fit
    weights are grouped (k-means, deterministic start) and each device's fit is then pulled towards
    its cohort's mean weights, as much as the cohort's real spread along that weight (its spread
    less what noise alone gives: a weight fitted on n datapoints of spread s varies by about
    s^2 * slots / n) allows: a posterior mean. A device with 300 datapoints in a flat cohort no
    longer fits a rhythm to its noise (its center wandered by 0.3 of its spread).
    """
    n, rank = weights.shape
    rows = np.flatnonzero(eligible)
    mean = np.zeros((n, rank))
    ridge = np.full((n, rank), RIDGE)
    if len(rows) < 2 * cohorts or rank == 0:
        return mean, ridge
    centers, label, signal = _rhythm_cohorts(weights[rows], spread[rows], datapoints[rows], slots, cohorts)
    mean[rows] = centers[label]
    ridge[rows] = np.maximum(spread[rows].astype(np.float64)[:, None] ** 2 / signal[label], RIDGE)
    return mean, ridge


def nearest_cohort_prior(weights: npt.NDArray[np.float64], spread: npt.NDArray[np.floating],
                         datapoints: npt.NDArray[np.floating], eligible: npt.NDArray[np.bool_],
                         members: npt.NDArray[np.int64], slots: int, cohorts: int = _RHYTHM_COHORTS,
                         ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``cohort_prior`` for ``members`` (device codes) from the rhythm cohorts of the ``eligible``
    devices alone, each member taking the cohort nearest its own weights: [len(members), rank]
    each. The small ridge towards 0 when there are too few eligible devices to form cohorts."""
    rows = np.flatnonzero(eligible)
    rank = weights.shape[1]
    mean, ridge = np.zeros((len(members), rank)), np.full((len(members), rank), RIDGE)
    if len(rows) < 2 * cohorts or rank == 0:
        return mean, ridge
    # At most _BASIS_DEVICES of them, evenly spread: the cohorts' means are as good, and k-means
    # over 90k devices cost 1.4 s.
    rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), _BASIS_DEVICES)).astype(np.int64)]
    centers, _, signal = _rhythm_cohorts(weights[rows], spread[rows], datapoints[rows], slots, cohorts)
    label = _nearest_center(weights[members], centers)
    mean = centers[label]
    ridge = np.maximum(spread[members].astype(np.float64)[:, None] ** 2 / signal[label], RIDGE)
    return mean, ridge


def _rhythm_cohorts(points: npt.NDArray[np.float64], spread: npt.NDArray[np.floating],
                    datapoints: npt.NDArray[np.floating], slots: int, cohorts: int,
                    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """k-means of the devices' weights ``points`` (deterministic start, 12 rounds): the cohorts'
    centres, each device's cohort, and per cohort and weight the spread of its devices' weights
    beyond what their fits' noise gives (``cohort_prior``)."""
    rank = points.shape[1]
    noise = spread.astype(np.float64) ** 2 * slots / np.maximum(datapoints, 1)
    centers = points[np.linspace(0, len(points) - 1, cohorts).astype(np.int64)]
    label = np.zeros(len(points), dtype=np.intp)
    counts = np.zeros(cohorts, dtype=np.int64)
    for _ in range(12):
        label = _nearest_center(points, centers)
        counts = np.bincount(label, minlength=cohorts)
        sums = np.zeros((cohorts, rank))
        np.add.at(sums, label, points)
        centers = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centers)
    squares = np.zeros((cohorts, rank))
    np.add.at(squares, label, (points - centers[label]) ** 2)
    noise_per_cohort = np.bincount(label, weights=noise, minlength=cohorts) / np.maximum(counts, 1)
    signal = np.maximum(squares / np.maximum(counts, 1)[:, None] - noise_per_cohort[:, None], 1e-6)
    return centers, label, signal


def _nearest_center(points: npt.NDArray[np.float64], centers: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    distances = (points ** 2).sum(axis=1)[:, None] - 2 * points @ centers.T + (centers ** 2).sum(axis=1)[None, :]
    label: npt.NDArray[np.intp] = distances.argmin(axis=1)
    return label


def _tables(segments: Segments, slot: npt.NDArray[np.int16], residual: npt.NDArray[np.float32],
            keep: npt.NDArray[np.bool_], fallbacks: Fallbacks | None, slots: int = 0) -> Iterator[
                tuple[int, int, npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
    """Per chunk of devices (a, b): their [b - a, slots] residual sums and counts (with the
    fallbacks; without, each slot of the week's own, of ``slots``)."""
    slots = fallbacks.slots if fallbacks is not None else slots
    ends = np.cumsum(segments.counts)
    a = 0
    while a < len(ends):
        start = int(ends[a - 1]) if a else 0
        b = int(np.searchsorted(ends, start + _CHUNK_DATAPOINTS, side="right"))
        b = max(b, a + 1)
        stop = int(ends[b - 1])
        sums = np.zeros((b - a, slots))
        counts = np.zeros((b - a, slots))
        kernels.slot_sums(segments.counts[a:b], slot[start:stop], residual[start:stop], keep[start:stop], sums, counts)
        table_sums, table_counts = (sums, counts) if fallbacks is None else fallbacks.table(sums, counts)
        yield a, b, table_sums, table_counts
        a = b
