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
fleet is, and what a store read ordered by thing and time gives); otherwise training keeps the
kurtosis of the sample's scores. One pass in chunks of whole devices, ~16M datapoints at a time.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_CHUNK = 16_000_000


def grouped(device: npt.NDArray[np.int32]) -> bool:
    """Whether the datapoints come grouped by device (non-decreasing codes)."""
    return len(device) < 2 or bool(np.all(device[1:] >= device[:-1]))


def difference_kurtosis(device: npt.NDArray[np.int32], value: npt.NDArray[np.floating], n_devices: int,
                        spread: npt.NDArray[np.floating], *, cap: float, nonnegative: bool,
                        ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per device: the kurtosis of its successive log-scale differences (capped) and how many there were.

    ``device`` must be grouped (``grouped``); a device with fewer than two datapoints gets 0.
    """
    bounds = np.searchsorted(device, np.arange(n_devices + 1, dtype=np.int64)).astype(np.int64)
    inverse = (1.0 / (np.sqrt(2.0) * np.maximum(np.asarray(spread, dtype=np.float64), 1e-9))).astype(np.float32)
    m2 = np.zeros(n_devices)
    m4 = np.zeros(n_devices)
    count = np.maximum(np.diff(bounds) - 1, 0)
    a = 0
    while a < n_devices:
        b = int(np.searchsorted(bounds, bounds[a] + _CHUNK, side="right")) - 1
        b = min(max(b, a + 1), n_devices)
        start, stop = int(bounds[a]), int(bounds[b])
        if stop - start >= 2:
            v = value[start:stop].astype(np.float32, copy=False)
            y = np.log1p(v) if nonnegative else np.copysign(np.log1p(np.abs(v)), v).astype(np.float32)
            d = np.diff(y)
            del y
            d *= inverse[device[start + 1:stop]]
            np.abs(d, out=d)
            np.minimum(d, np.float32(cap), out=d)
            steps = bounds[a + 1:b] - start - 1  # the step from one device to the next
            d[steps[(steps >= 0) & (steps < len(d))]] = 0.0
            # Per device, its run of differences (grouped data: a reduction over runs, not a bincount).
            starts = bounds[a:b] - start
            present = (np.diff(bounds[a:b + 1]) > 0) & (starts < len(d))
            rows = np.flatnonzero(present) + a
            d *= d
            m2[rows] = np.add.reduceat(d, starts[present], dtype=np.float64)
            d *= d
            m4[rows] = np.add.reduceat(d, starts[present], dtype=np.float64)
        a = b
    with np.errstate(invalid="ignore", divide="ignore"):
        kurtosis = np.nan_to_num(m4 * count / (m2 * m2))
    return kurtosis, count
