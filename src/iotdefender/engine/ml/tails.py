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
or not. When training sampled, the pass that fits each device from all its datapoints (refit.py)
computes the differences from the same chunks (``run_moments``) with the refitted spread, and
leaves out those that touch a sampled datapoint (whose scores calibrate the cohorts).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_CHUNK = 125_000  # 0.5 MB a float32 column: the chunk's passes run in the cache (refit.py: 10 % less CPU than 500k)
_GROUPED_CHUNK = 1 << 18  # codes compared at a time by ``grouped``


def grouped(device: npt.NDArray[np.int32]) -> bool:
    """Whether the datapoints come grouped by device (non-decreasing codes).

    In chunks that fit the cache, overlapping by one: the whole column at once wrote a mask of
    403M bytes at 100k devices x 14 days (1.2 s; chunked ~0.3 s), and a chunk out of order ends it."""
    n = len(device)
    for start in range(0, n - 1, _GROUPED_CHUNK):
        part = device[start:start + _GROUPED_CHUNK + 1]
        if not bool(np.all(part[1:] >= part[:-1])):
            return False
    return True


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


def device_bounds(device: npt.NDArray[np.integer], n_devices: int) -> npt.NDArray[np.int64]:
    """Where each device's datapoints start in ``device`` (grouped, ``grouped``), and the end."""
    return np.searchsorted(device, np.arange(n_devices + 1, dtype=device.dtype)).astype(np.int64)


def differences(device: npt.NDArray[np.int32], value: npt.NDArray[np.floating], n_devices: int,
                spread: npt.NDArray[np.floating], *, cap: float, nonnegative: bool) -> Differences:
    """One pass over every datapoint: each device's ``Differences``.

    ``device`` must be grouped (``grouped``); a device with fewer than two datapoints gets 0.
    """
    bounds = device_bounds(device, n_devices)
    inverse = (1.0 / (np.sqrt(2.0) * np.maximum(np.asarray(spread, dtype=np.float64), 1e-9))).astype(np.float32)
    m2 = np.zeros(n_devices)
    m4 = np.zeros(n_devices)
    count = np.zeros(n_devices, dtype=np.int64)
    for a, b in chunks(bounds):
        start, stop = int(bounds[a]), int(bounds[b])
        m2[a:b], m4[a:b], count[a:b] = run_moments(log32(value[start:stop], nonnegative), np.diff(bounds[a:b + 1]),
                                                   inverse[a:b], cap)
    return finish(m2, m4, count)


def chunks(bounds: npt.NDArray[np.int64], size: int | None = None) -> Iterator[tuple[int, int]]:
    """Runs of whole devices (a, b) of about ``size`` datapoints (``_CHUNK``: what fits the cache;
    one device at least), given each device's first datapoint ``bounds[d]`` and the end ``bounds[-1]``."""
    size = _CHUNK if size is None else size
    n_devices = len(bounds) - 1
    a = 0
    while a < n_devices:
        b = int(np.searchsorted(bounds, bounds[a] + size, side="right")) - 1
        b = min(max(b, a + 1), n_devices)
        yield a, b
        a = b


def log32(values: npt.NDArray[np.floating], nonnegative: bool) -> npt.NDArray[np.float32]:
    """``model.to_log`` over an array, in float32 (half the memory and time of float64)."""
    v = values.astype(np.float32, copy=False)
    if nonnegative:
        return np.log1p(v)
    result: npt.NDArray[np.float32] = np.copysign(np.log1p(np.abs(v)), v)
    return result


def run_moments(y: npt.NDArray[np.float32], lengths: npt.NDArray[np.int64], inverse: npt.NDArray[np.float32],
                cap: float, left_out: npt.NDArray[np.bool_] | None = None,
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per device of a run of whole devices (``lengths`` datapoints each, ``y`` their log values in
    order): the sums of the squares and fourth powers of its successive differences times
    ``inverse`` (1 / (sqrt(2) x its spread)), capped at ``cap``, and how many differences; without
    those that touch a ``left_out`` datapoint."""
    m2 = np.zeros(len(lengths))
    m4 = np.zeros(len(lengths))
    count = np.maximum(lengths - 1, 0)
    n = len(y)
    if n < 2:
        return m2, m4, count
    d = np.subtract(y[1:], y[:-1])
    d *= np.repeat(np.asarray(inverse, dtype=np.float32), lengths)[1:]
    np.abs(d, out=d)
    np.minimum(d, np.float32(cap), out=d)
    starts = np.cumsum(lengths) - lengths
    steps = starts[(starts > 0) & (starts < n)] - 1  # the step from one device to the next
    present = lengths >= 2
    if left_out is not None:
        dropped = left_out[1:] | left_out[:-1]
        dropped[steps] = False
        d[dropped] = 0.0
        count[present] -= np.add.reduceat(dropped, starts[present], dtype=np.int64)
    d[steps] = 0.0
    # Per device, its run of differences (grouped data: a reduction over runs, not a bincount).
    d *= d
    m2[present] = np.add.reduceat(d, starts[present], dtype=np.float64)
    d *= d
    m4[present] = np.add.reduceat(d, starts[present], dtype=np.float64)
    return m2, m4, count


def finish(m2: npt.NDArray[np.float64], m4: npt.NDArray[np.float64], count: npt.NDArray[np.int64]) -> Differences:
    """``Differences`` from ``run_moments``' sums over every chunk."""
    with np.errstate(invalid="ignore", divide="ignore"):
        kurtosis = np.nan_to_num(m4 * count / (m2 * m2))
        rms = np.nan_to_num(np.sqrt(m2 / count))
    return Differences(kurtosis, count, rms)
