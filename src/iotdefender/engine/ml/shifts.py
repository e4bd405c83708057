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
(pipeline/ml_exclusion.py), and everything is kept as before. When training had to sample (100k devices x 14
days), it does not fit again: with a fifth of such a fleet contaminated the second fit took
training from 30 s to 72 s, and raised the cohorts' thresholds instead of lowering them. Taking the longer side in that case
as the device's clean new level was tried: the benchmark's devices return to their old level after
the training window, and that model alarmed on the return all week (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

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


def changed(rms: npt.NDArray[np.floating], count: npt.NDArray[np.integer],
            own: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Per device: its spread is over ``_RATIO`` times the noise its successive differences show."""
    result: npt.NDArray[np.bool_] = own & (count >= _MIN_DIFFERENCES) & (rms > 0) & (rms * _RATIO < 1)
    return result


def bulk_datapoints(data: TrainingData, moved: npt.NDArray[np.bool_], center: Callable[[npt.NDArray[np.float64]],
                    npt.NDArray[np.float64]], margin: float) -> npt.NDArray[np.bool_]:
    """Per datapoint of ``data`` (grouped by device): False after each ``moved`` device's change, and
    ``margin`` seconds before it, when the part after it is the shorter; ``center(times)`` is the
    fleet's centre."""
    keep = np.ones(len(data), dtype=bool)
    bounds = np.searchsorted(data.device, np.arange(len(moved) + 1, dtype=np.int64))
    for d in np.flatnonzero(moved).tolist():
        start, stop = int(bounds[d]), int(bounds[d + 1])
        if stop - start < 3:
            continue
        times = np.asarray(data.time[start:stop], dtype=np.float64)
        order = np.argsort(times, kind="stable")
        times = times[order]
        residual = to_log_array(data.value[start:stop][order]) - center(times)
        walk = np.cumsum(residual - residual.mean())
        change = times[int(np.argmax(np.abs(walk[:-1]))) + 1]
        before, after = times < change - margin, times >= change + margin
        if after.sum() >= before.sum():
            continue  # the change has lasted half the window: its new normal, all kept
        kept = np.empty(stop - start, dtype=bool)
        kept[order] = before
        keep[start:stop] = kept
    return keep
