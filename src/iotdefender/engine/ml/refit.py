"""Each device's level, rhythm weights and spread from ALL its datapoints, when training sampled.

At 100k devices x 14 days (403M datapoints) training computes its statistics on a sample of a few
percent, ~100-250 datapoints a device. What the fleet shares (its centre per slot, the rhythm
basis, the slot shape, the thresholds) is well estimated from that; a device's own centre is not:
17 numbers (level and 16 rhythm weights) fitted on ~235 datapoints left a device with a strong
rhythm over a small noise with a fitted spread up to 1.39 times its noise, and every device's
spread is widened by sqrt((n + 17) / (n - 17)) for the fit's in-sample bias (1.075 at 235), so a
5-sigma spike scored ~4.8 against HIGH thresholds of ~4.84 (bench/README.md, "Not done: HIGH at
100k devices").

So, when the datapoints come grouped by device (tails.grouped), one pass over every datapoint in
chunks of whole devices that fit the cache fits each device again, starting from the sample's fit:

1. its log values, the slot of each (clock.py) and its residual from the sample's fit (fleet
   centre + level + rhythm, the line between slot centres);
2. device-slot sums and counts of the residuals within ``rhythm_clip`` of the sample's spread (an
   anomaly in training does not pull the rhythm), and from them a correction of the level and the
   weights, jointly, by seasonal.py's normal equations with its small ridge. Not with the cohort
   prior the sample's fit uses (seasonal.cohort_prior): its means are first fits on ~235
   datapoints, which that fit's ridge shrinks by ~7 %, and for cohorts whose devices share one
   rhythm its ridge is large, so a strong rhythm stayed ~7 % short (measured on a synthetic fleet:
   spreads 2.2 times the noise with it, 1.7 without); on ~4,000 datapoints a device's own data
   decide its 17 numbers to ~6 % of its noise;
3. the residuals around the corrected fit and their clipped moments (robust.py): the level's last
   shift and the spread, one round from the spread around the level alone, as on all datapoints;
4. with that spread, the moments of the successive differences (tails.py): how heavy the device's
   tail is, and whether its level changed inside the window (shifts.py). The tails pass read every
   value already; this pass replaces it, so the values are read and log-scaled once.

A device's datapoints need not be regular in time: every datapoint's slot is computed from its time.
Training runs the pass a second time over the devices whose level changed inside the window, on
their datapoints before the change alone (shifts.Bulk, ``FullFit.with_part``): the same fit from
the same start, without the part the band should not cover, and with ``prior`` (their rhythm
cohort's weights: those days may miss part of the week, which the small ridge alone left to the
first fit over both levels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from iotdefender.engine.ml import kernels, tails
from iotdefender.engine.ml.clock import SeasonalClock
from iotdefender.engine.ml.data import TrainingData
from iotdefender.engine.ml.robust import clipped_std_factor, finite
from iotdefender.engine.ml.seasonal import RIDGE, Fallbacks, NormalEquations, basis_devices, principal_rhythms

_N = TypeVar("_N", bound=np.generic)
_BLOCK = 500_000  # datapoints whose devices' normal equations are solved together (4 chunks)
# A datapoint this many spreads off its device's fit counts as far (``FullFit.beyond``): normal
# noise puts 6e-5 of them there, a nightly bump of 6 spreads a dozen a night.
BEYOND = 4.0


@dataclass(frozen=True)
class SampleFit:
    """What the sample gave, per device: the starting point (float32 as the model stores it)."""

    location: npt.NDArray[np.floating]  # level relative to the fleet's centre, log scale
    weights: npt.NDArray[np.floating]  # [devices, rank]
    spread: npt.NDArray[np.floating]  # around level and rhythm
    # Around the level alone (wider): the clipped moments around the new fit start from it, as
    # training's on all datapoints do (a narrower start clips a heavy tail more: 4 % narrower spreads
    # for the Student-t devices of the benchmark).
    level_spread: npt.NDArray[np.floating]


@dataclass(frozen=True)
class FullFit:
    """Per device, from all its datapoints."""

    location: npt.NDArray[np.float32]
    weights: npt.NDArray[np.float32]
    spread: npt.NDArray[np.float32]
    datapoints: npt.NDArray[np.int64]
    differences: tails.Differences
    # How many of its datapoints outside the sample lie over ``BEYOND`` spreads off the fit, and of
    # how many outside the sample: a lasting anomaly inside the window (a nightly bump) gives dozens,
    # which the differences barely show (calibration.crowding_by_counts).
    beyond: npt.NDArray[np.int64]
    outside: npt.NDArray[np.int64]

    def with_part(self, devices: npt.NDArray[np.int64], part: FullFit) -> FullFit:
        """This fit with the entries of ``devices`` taken from ``part`` (a fit of those devices
        alone, device ``i`` of it being ``devices[i]``: shifts.Bulk)."""
        def merged(mine: npt.NDArray[_N], theirs: npt.NDArray[_N]) -> npt.NDArray[_N]:
            result = mine.copy()
            result[devices] = theirs
            return result

        d, p = self.differences, part.differences
        return FullFit(merged(self.location, part.location), merged(self.weights, part.weights),
                       merged(self.spread, part.spread), merged(self.datapoints, part.datapoints),
                       tails.Differences(merged(d.kurtosis, p.kurtosis), merged(d.count, p.count),
                                         merged(d.rms, p.rms)),
                       merged(self.beyond, part.beyond), merged(self.outside, part.outside))


def refit(data: TrainingData, clock: SeasonalClock, center: npt.NDArray[np.float64], basis: npt.NDArray[np.float64],
          fallbacks: Fallbacks, start: SampleFit, sampled: npt.NDArray[np.int64], *, nonnegative: bool, rhythm_clip: float, cap: float,
          clip: float = 3.5,
          prior: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None) -> FullFit:
    """One pass over ``data`` (grouped by device): ``FullFit`` from the sample's ``start``.

    ``center`` [slots] is the fleet's centre, ``basis`` [slots, rank] its rhythms; ``sampled`` the
    sample's datapoints (increasing indices into ``data``), whose scores set the thresholds: the
    differences that say which tail cohort a device is in leave them out (cross-fitted, as training
    on all datapoints sorts on half and calibrates on the other: a device whose window happened to
    be light would otherwise bring its light scores to a light cohort and pull its thresholds
    low). ``cap`` is the differences' (tails.py), ``clip`` the clipped moments' (robust.py: one round).
    ``prior`` (mean, ridge), both [devices, rank], pulls the weights towards the mean as
    ``seasonal.fit_weights``' does (the level keeps the small ridge); without it, only the small
    ridge holds the correction.
    """
    n_devices = len(data.devices)
    slots, rank = basis.shape
    f32 = np.float32
    bounds = tails.device_bounds(data.device, n_devices)
    lengths = np.diff(bounds)
    # One column for the level, then the rhythms: the correction is fitted jointly.
    augmented = np.concatenate((np.ones((slots, 1)), basis), axis=1)
    augmented32 = augmented.astype(f32)
    equations = NormalEquations(augmented)
    center32 = center.astype(f32)
    location = start.location.astype(f32)
    weights = start.weights.astype(f32)
    spread = start.spread.astype(f32)
    level_spread = start.level_spread.astype(np.float64)
    m2 = np.zeros(n_devices)
    m4 = np.zeros(n_devices)
    count = np.zeros(n_devices, dtype=np.int64)
    beyond = np.zeros(n_devices, dtype=np.int64)
    outside = np.zeros(n_devices, dtype=np.int64)
    scale = 1.0 / clock.slot_seconds
    offset = clock.origin / clock.slot_seconds + 0.5
    correction = clipped_std_factor(clip)
    # Blocks of ~500k datapoints share one solve of the normal equations (it has a fixed cost); the
    # datapoints' columns (17 bytes a datapoint) are kept until the block's devices are solved.
    for a, b in tails.chunks(bounds, _BLOCK):
        m = b - a
        begin, stop = int(bounds[a]), int(bounds[b])
        run = lengths[a:b]
        # 1-2. Each datapoint's residual from the sample's fit; device-slot sums of those near it.
        table = center32[None, :] + location[a:b, None] + np.einsum("dk,sk->ds", weights[a:b], augmented32[:, 1:])
        y = _log(data.value[begin:stop], nonnegative)
        first = np.empty(stop - begin, dtype=np.int32)
        fraction = np.empty(stop - begin, dtype=f32)
        residual = np.empty(stop - begin, dtype=f32)
        sums = np.zeros((m, slots))
        counts = np.zeros((m, slots))
        kernels.residual_sums(y, np.asarray(data.time[begin:stop], dtype=np.float64), run,
                              table, (rhythm_clip * spread[a:b]).astype(f32), scale, offset,
                              first, fraction, residual, sums, counts)
        # The correction of level and weights, with the small ridge: the cohort prior
        # (seasonal.cohort_prior) pulled strong rhythms towards their cohort's mean of first fits on
        # ~235 datapoints, which that fit's ridge shrinks by ~7 %: on 4,000 datapoints a device's own
        # data decide.
        towards = None if prior is None else (
            np.concatenate((np.zeros((m, 1)), prior[0][a:b] - weights[a:b]), axis=1),
            np.concatenate((np.full((m, 1), RIDGE), prior[1][a:b]), axis=1))
        step = equations.solve(*fallbacks.table(sums, counts), towards).astype(f32)
        location[a:b] += step[:, 0]
        weights[a:b] += step[:, 1:]
        moved = step[:, :1] + np.einsum("dk,sk->ds", step[:, 1:], augmented32[:, 1:])  # not BLAS (seasonal.py)
        # 3-5. Level and spread around the corrected fit (clipped moments, as training's on all
        # datapoints), the successive differences with that spread, the far datapoints outside the sample.
        left_out = np.zeros(stop - begin, dtype=bool)
        left_out[sampled[np.searchsorted(sampled, begin):np.searchsorted(sampled, stop)] - begin] = True
        shift = np.empty(m)
        std = np.empty(m)
        kernels.fit_moments(y, first, fraction, residual, run, moved, finite(clip * level_spread[a:b]).astype(f32),
                            level_spread[a:b], spread[a:b].copy(), left_out, correction, cap, BEYOND,
                            shift, std, m2[a:b], m4[a:b], count[a:b], beyond[a:b], outside[a:b])
        location[a:b] += shift.astype(f32)
        spread[a:b] = std.astype(f32)
        del y, first, fraction, residual, left_out
    return FullFit(location, weights, spread, lengths, tails.finish(m2, m4, count), beyond, outside)


def _slope(table: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """[devices, slots]: from each slot centre's value to the next one's (the week wraps)."""
    slope = np.roll(table, -1, axis=1)
    slope -= table
    return slope


def along(table: npt.NDArray[np.float32], cell: npt.NDArray[np.int32], fraction: npt.NDArray[np.float32],
           slope: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
    """[devices, slots] ``table`` at each datapoint: the line from its device's slot centre ``cell``
    (flat index) to the next slot's (the week wraps), ``fraction`` of the way (``clock.between_table``
    with one index: a gather less). ``slope`` is ``_slope(table)`` when the caller has it."""
    slope = _slope(table) if slope is None else slope
    result: npt.NDArray[np.float32] = table.ravel().take(cell)
    result += fraction * slope.ravel().take(cell)
    return result


def shared_basis(data: TrainingData, clock: SeasonalClock, center: npt.NDArray[np.float64],
                 location: npt.NDArray[np.floating], eligible: npt.NDArray[np.bool_], fallbacks: Fallbacks, rank: int,
                 *, nonnegative: bool, devices: int) -> npt.NDArray[np.float64]:
    """``seasonal.shared_basis`` from all the datapoints of ``devices`` of the ``eligible`` (evenly
    spread; ``data`` grouped by device), their residuals from the fleet's centre and their
    ``location``: a device's slot means from ~12 datapoints a slot instead of the sample's ~0.7."""
    rows, rank = basis_devices(eligible, rank, clock.slots)
    rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), devices)).astype(np.int64)] if len(rows) else rows
    if rank == 0:
        return np.zeros((clock.slots, 0))
    slots = clock.slots
    bounds = tails.device_bounds(data.device, len(data.devices))
    lengths = bounds[rows + 1] - bounds[rows]
    center32 = center.astype(np.float32)
    location = location.astype(np.float32)
    means = []
    for a, b in tails.chunks(np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)):
        counts_of = lengths[a:b]
        total = int(counts_of.sum())
        # The chosen devices' runs, one after the other.
        index = np.repeat(bounds[rows[a:b]] - (np.cumsum(counts_of) - counts_of), counts_of) + np.arange(total)
        y = _log(data.value[index], nonnegative)
        first, fraction = clock.first_of(np.asarray(data.time[index], dtype=np.float64))
        y -= along(center32[None, :], first, fraction)
        y -= np.repeat(location[rows[a:b]], counts_of)
        cells = _nearest(np.repeat(np.arange(b - a, dtype=np.intp) * slots, counts_of) + first, first, fraction, slots)
        sums, counts = fallbacks.table(
            np.bincount(cells, weights=y, minlength=(b - a) * slots).astype(np.float64).reshape(b - a, slots),
            np.bincount(cells, minlength=(b - a) * slots).astype(np.float64).reshape(b - a, slots))
        means.append(np.where(counts > 0, sums / np.maximum(counts, 1), 0.0))
    return principal_rhythms(np.concatenate(means), rank)


def _nearest(cell: npt.NDArray[np.signedinteger], first: npt.NDArray[np.int32], fraction: npt.NDArray[np.float32],
             slots: int) -> npt.NDArray[np.signedinteger]:
    """The device-slot cell each datapoint falls in, given ``cell``, the flat index of its device's
    slot ``first`` (whose centre is at or before it): that one or the next, whichever centre is
    nearer. The next of a week's last slot is the week's first: rare (1 in ``slots``), so found
    from the last slot's datapoints, not by a comparison over every cell."""
    nearest = cell + (fraction >= 0.5)
    last = np.flatnonzero(first == slots - 1)
    last = last[fraction[last] >= 0.5]
    nearest[last] -= slots
    return nearest


def _log(values: npt.NDArray[np.floating], nonnegative: bool) -> npt.NDArray[np.float32]:
    """``tails.log32``; ``nonnegative`` came from the sample, and a negative value outside it would
    give NaN (log1p below -1) and a device's whole fit with it, so each chunk is checked."""
    return tails.log32(values, nonnegative and (not len(values) or bool(values.min() >= 0)))
