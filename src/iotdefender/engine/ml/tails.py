"""How heavy each device's tail is, from ALL its datapoints when training had to sample.

Thresholds are set per cohort of devices with alike tails (calibration.py), and the cohorts are
formed by the kurtosis of each device's scores. On a sample of ~290 datapoints a device (100k
devices x 14 days trained within 30 s) a Student-t device's kurtosis often looks normal, the spiky
devices land in every cohort, and keeping HIGH's false alarms low lifts every cohort's HIGH
threshold to ~8.5 standard deviations: 5-sigma spikes go unseen.

Scoring every datapoint against the fitted model costs a gather of the rhythm per datapoint, too
much at 403M. The kurtosis of successive differences needs no model: within a device, the level
cancels and a rhythm that moves slowly against the report interval nearly does, so y[t] - y[t-1]
is about the difference of two noise draws, whose kurtosis is 3 + (k - 3) / 2 for a noise of
kurtosis k: heavy stays heavier than normal, on 4,000 datapoints instead of 150. The differences
are capped at ``cap`` (5 in training) of the device's (sampled) spread x sqrt(2), so an anomaly inside the training
window does not decide its device's cohort.

It needs the datapoints grouped by device, in time order within a device (what the benchmark's
fleet is, and what the trainer's read, ordered by thing and time, gives); otherwise training keeps
the kurtosis of the sample's scores. One pass in chunks of whole devices that fit the cache; the
same pass gives each device's noise against its fitted spread, which tells a level that changed
inside the window (shifts.py), so training runs it whenever the datapoints come grouped, sampled
or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_CHUNK = 500_000  # 2 MB a float32 column: the chunk's passes run in the cache


def grouped(device: npt.NDArray[np.int32]) -> bool:
    """Whether the datapoints come grouped by device (non-decreasing codes)."""
    return len(device) < 2 or bool(np.all(device[1:] >= device[:-1]))


@dataclass(frozen=True)
class Differences:
    """Per device, from its successive log-scale differences divided by sqrt(2) x its spread, capped."""

    kurtosis: npt.NDArray[np.float64]  # 3 for normal noise; 0 for a device with fewer than two datapoints
    count: npt.NDArray[np.int64]  # how many differences
    # Their root mean square: about 1 when the spread is the device's noise; well below 1 when the
    # spread is wider than its noise (a level that changed inside the window: shifts.py).
    rms: npt.NDArray[np.float64]


def difference_kurtosis(device: npt.NDArray[np.int32], value: npt.NDArray[np.floating], n_devices: int,
                        spread: npt.NDArray[np.floating], *, cap: float, nonnegative: bool,
                        ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per device: the kurtosis of its successive log-scale differences (capped) and how many there were."""
    result = differences(device, value, n_devices, spread, cap=cap, nonnegative=nonnegative)
    return result.kurtosis, result.count


def differences(device: npt.NDArray[np.int32], value: npt.NDArray[np.floating], n_devices: int,
                spread: npt.NDArray[np.floating], *, cap: float, nonnegative: bool) -> Differences:
    """One pass over every datapoint: each device's ``Differences``.

    ``device`` must be grouped (``grouped``); a device with fewer than two datapoints gets 0.
    """
    bounds = np.searchsorted(device, np.arange(n_devices + 1, dtype=np.int64)).astype(np.int64)
    inverse = (1.0 / (np.sqrt(2.0) * np.maximum(np.asarray(spread, dtype=np.float64), 1e-9))).astype(np.float32)
    m2 = np.zeros(n_devices)
    m4 = np.zeros(n_devices)
    count = np.maximum(np.diff(bounds) - 1, 0)
    largest = int(np.diff(bounds).max()) if n_devices else 0
    y = np.empty(max(_CHUNK, largest) + 1, dtype=np.float32)  # reused: the passes stay in the cache
    d = np.empty_like(y)
    scale = np.empty_like(y)
    a = 0
    while a < n_devices:
        b = int(np.searchsorted(bounds, bounds[a] + _CHUNK, side="right")) - 1
        b = min(max(b, a + 1), n_devices)
        start, stop = int(bounds[a]), int(bounds[b])
        n = stop - start
        if n >= 2:
            yc, dc, sc = y[:n], d[:n - 1], scale[:n - 1]
            v = value[start:stop]
            if nonnegative:
                np.log1p(v, out=yc)
            else:
                np.copysign(np.log1p(np.abs(v)), v, out=yc)
            np.subtract(yc[1:], yc[:-1], out=dc)
            np.take(inverse, device[start + 1:stop], out=sc)
            dc *= sc
            np.abs(dc, out=dc)
            np.minimum(dc, np.float32(cap), out=dc)
            steps = bounds[a + 1:b] - start - 1  # the step from one device to the next
            dc[steps[(steps >= 0) & (steps < n - 1)]] = 0.0
            # Per device, its run of differences (grouped data: a reduction over runs, not a bincount).
            starts = bounds[a:b] - start
            present = (np.diff(bounds[a:b + 1]) > 0) & (starts < n - 1)
            rows = np.flatnonzero(present) + a
            dc *= dc
            m2[rows] = np.add.reduceat(dc, starts[present], dtype=np.float64)
            dc *= dc
            m4[rows] = np.add.reduceat(dc, starts[present], dtype=np.float64)
        a = b
    with np.errstate(invalid="ignore", divide="ignore"):
        kurtosis = np.nan_to_num(m4 * count / (m2 * m2))
        rms = np.nan_to_num(np.sqrt(m2 / count))
    return Differences(kurtosis, count, rms)
