"""A device whose level changed inside its training window: fitted on the part before the change.

A level shift or a drift that lasts into the end of the window splits a device's datapoints into
two groups some spreads apart. The clipped moments (robust.py) and the rhythm fit then cover both:
in the benchmark such a device's spread came out 1.8-6.5 times its noise, its tail cohort's
thresholds rose with its shifted datapoints' scores, and the model flagged neither part — so a
second look at the window (a refresh's exclusion, pipeline/ml_exclusion.py, or a first build
scoring its own window, tried) has nothing to leave out — while it alarmed when the device came
back to its old level, and missed what a narrower band would catch.

The device's noise is known without a level, though: successive differences cancel a level and a
slow rhythm (tails.py), and their root mean square over sqrt(2) x the fitted spread is about 1 when
the spread is the noise (0.93-1.09 over the benchmark's 1,765 clean devices; down to 0.68 when
sampled as at 100k devices) and well below when it is not (0.17-0.56 for its level shifts, drifts
and shifting cohort; bench/README.md). Such a
device's change is then found in time: the largest excursion of the cumulative sum of its values
less the fleet's centre (a mean shift's change point; the fleet's centre takes most of the rhythm
out), within a day and a half of the planted start for nine in ten of them. When what follows the
change is the shorter part of the window, training leaves it out, with a day either side of the
change (a drift's ramp), and fits again: the device's normal is what it was before. When it is the
longer part, it has lasted half the window and is the device's new normal by the refreshes' rule
(pipeline/ml_exclusion.py), and everything is kept as before.

When training samples (a first build of more than ~3,000 devices x 14 days) and the datapoints come
grouped by device, as the service's trainer reads them, each device is already fitted from all its
datapoints in one pass (refit.py), and only the devices cut here are fitted again, from all their
datapoints before the change, their rhythm pulled towards the nearest rhythm cohort of the
unchanged devices (the days before the change may miss part of the week), while the fleet's
statistics stay the sample's and the sampled datapoints after the change leave the calibration
(training.py): ~3 s of CPU at 100k devices x 14 days with a fifth of them contaminated, nothing on
a clean fleet. Fitting the whole window again, as when training does not sample, took that
training from 30 s to 72 s (before refit.py, on a sample of 25M). At 5,000 devices with a fifth
contaminated the cut devices' spreads went from 2.3-5.6 times their noise to 1.0-1.2 and MEDIUM's
F1 from 0.833 to 0.851 (10,000: 0.766 to 0.787, its false alarms 14.8 to 15.4 per 1,000
device-days; bench/README.md, "Level shifts when training samples").
Sampled without the datapoints grouped (no differences, no refit) nothing is taken for changed.

Taking the longer side as the device's clean new level was tried: the benchmark's devices return
to their old level after the training window, and that model alarmed on the return all week
(bench/README.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iotdefender.engine.ml import tails
from iotdefender.engine.ml.data import TrainingData
from iotdefender.engine.ml.model import to_log_array

# A spread this many times the noise from differences is taken for a level change. Clean devices
# reach 1.08 in the benchmark when trained on all their datapoints, but 1.48 (rms 0.675) over 20,000
# devices and 1.39 over 100,000 when sampled as at 100k devices (~235 datapoints each: a strong
# rhythm over a small noise is fitted less well than the noise); planted level shifts are 1.8-4.8,
# drifts 2.2-5.9, a shifting cohort 2.2-2.3. A cut at 1.5 left almost no margin for the sampled
# clean devices and took 13 of 66 new behaviours (bench/README.md).
_RATIO = 2.0
_MIN_DIFFERENCES = 50  # fewer say little about a device's noise
_CHUNK = 1_000_000  # datapoints of moved devices looked at together (bulk)


def changed(rms: npt.NDArray[np.floating], count: npt.NDArray[np.integer],
            own: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Per device: its spread is over ``_RATIO`` times the noise its successive differences show."""
    result: npt.NDArray[np.bool_] = own & (count >= _MIN_DIFFERENCES) & (rms > 0) & (rms * _RATIO < 1)
    return result


@dataclass(frozen=True)
class Bulk:
    """The devices whose later part is left out, and what is kept of them."""

    devices: npt.NDArray[np.int64]  # their codes, increasing
    index: npt.NDArray[np.int64]  # their kept datapoints: increasing indices into the data
    counts: npt.NDArray[np.int64]  # per such device, how many were kept

    def keep(self, data: TrainingData) -> npt.NDArray[np.bool_]:
        """Per datapoint of ``data`` (grouped by device): False where it is left out."""
        keep = np.ones(len(data), dtype=bool)
        bounds = tails.device_bounds(data.device, len(data.devices))
        for d in self.devices.tolist():
            keep[int(bounds[d]):int(bounds[d + 1])] = False
        keep[self.index] = True
        return keep

    def data(self, data: TrainingData) -> TrainingData:
        """The kept datapoints of these devices alone, as their own ``TrainingData`` (device ``i``
        of it is ``devices[i]``; still grouped and in the same order)."""
        return TrainingData(np.repeat(np.arange(len(self.devices), dtype=np.int32), self.counts),
                            [data.devices[d] for d in self.devices.tolist()],
                            data.time[self.index], data.value[self.index])


def bulk(data: TrainingData, moved: npt.NDArray[np.bool_], center: Callable[[npt.NDArray[np.float64]],
         npt.NDArray[np.float64]], margin: float) -> Bulk:
    """The ``moved`` devices of ``data`` (grouped by device) whose part after their change is the
    shorter, and what is kept of them: their datapoints up to ``margin`` seconds before the change;
    ``center(times)`` is the fleet's centre.

    Vectorised over runs of whole devices (a device at a time cost 1.3 ms, 11 s for the 8,625
    devices taken for changed ones at 100k devices with a fifth contaminated).
    """
    bounds = tails.device_bounds(data.device, len(moved))
    rows = np.flatnonzero(moved & (np.diff(bounds) >= 3))
    lengths = bounds[rows + 1] - bounds[rows]
    devices: list[npt.NDArray[np.int64]] = []
    kept: list[npt.NDArray[np.int64]] = []
    counts: list[npt.NDArray[np.int64]] = []
    for a, b in tails.chunks(np.concatenate(([0], np.cumsum(lengths))).astype(np.int64), _CHUNK):
        cut, index, count = _bulk_of(data, rows[a:b], bounds[rows[a:b]], lengths[a:b], center, margin)
        devices.append(cut)
        kept.append(index)
        counts.append(count)
    empty = np.zeros(0, dtype=np.int64)
    return Bulk(np.concatenate(devices) if devices else empty, np.concatenate(kept) if kept else empty,
                np.concatenate(counts) if counts else empty)


def _bulk_of(data: TrainingData, rows: npt.NDArray[np.int64], starts: npt.NDArray[np.int64],
             lengths: npt.NDArray[np.int64], center: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]],
             margin: float) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``bulk`` for a run of devices ``rows`` (each at least 3 datapoints, from ``starts``): the
    devices cut, the indices kept of them, and how many each."""
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths  # each device's first position in the run
    index = np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)
    segment = np.repeat(np.arange(len(rows)), lengths)
    times = np.asarray(data.time[index], dtype=np.float64)
    if np.any(np.diff(times)[np.diff(segment) == 0] < 0):
        order = np.lexsort((times, segment))  # each device's datapoints in time order
        index, times = index[order], times[order]
    residual = to_log_array(data.value[index]) - center(times)
    residual -= np.repeat(np.add.reduceat(residual, offsets) / lengths, lengths)
    walk = np.cumsum(residual)
    walk -= np.repeat(walk[offsets] - residual[offsets], lengths)  # each device's own cumulative sum
    excursion = np.abs(walk)
    excursion[offsets + lengths - 1] = -1.0  # a change after the last datapoint is none
    largest = np.maximum.reduceat(excursion, offsets)
    at = np.flatnonzero(excursion == np.repeat(largest, lengths))
    change = times[at[np.searchsorted(at, offsets)] + 1]  # the first largest of each device, then one on
    before = times < np.repeat(change - margin, lengths)
    after = times >= np.repeat(change + margin, lengths)
    n_before = np.add.reduceat(before, offsets, dtype=np.int64)
    cut = n_before > np.add.reduceat(after, offsets, dtype=np.int64)  # else its new normal, all kept
    before &= np.repeat(cut, lengths)
    return rows[cut].astype(np.int64), np.sort(index[before]), n_before[cut]
