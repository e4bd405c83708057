"""The daily and weekly rhythm: the fleet's per hour of the week, and each device's own as a few
weights on rhythms the fleet shares.

Devices do not share one rhythm (an office gateway is busy on weekday afternoons in its own time
zone, a backup box at 02:00), so a fleet median alone leaves most of a device's rhythm in its
residuals and widens its band by its whole daily swing. Storing 168 hourly levels per device would
cost 672 bytes per (behavior, device) and needs weeks of data per device; instead the device-hour
means of the whole fleet are reduced to their ``rank`` main components (an SVD, deterministic), and
each device keeps ``rank`` weights: its rhythm is ``weights @ basis[hour]``. With a rank of 16 the
benchmark's 13 distinct rhythms are represented; a real fleet's cohorts (firmware, site, time zone)
behave alike.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from iotdefender.engine.ml.clock import HOURS_PER_DAY, HOURS_PER_WEEK
from iotdefender.engine.ml.robust import median_by_group

DAYS = HOURS_PER_WEEK // HOURS_PER_DAY
_BASIS_DEVICES = 20_000


def fallbacks(counts: npt.NDArray[np.floating], enough: float) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Per hour of the week: (use its own statistics, else use its hour of the day's); neither = the whole period.

    ``counts`` are datapoints per hour of the week in the full training set.
    """
    day_counts = counts.reshape(DAYS, HOURS_PER_DAY).sum(axis=0)
    use_week = counts >= enough
    use_day = ~use_week & (np.tile(day_counts, DAYS) >= enough)
    return use_week, use_day


def per_hour_median(hour: npt.NDArray[np.int16], values: npt.NDArray[np.floating],
                    use_week: npt.NDArray[np.bool_], use_day: npt.NDArray[np.bool_],
                    default: float | None = None) -> npt.NDArray[np.float64]:
    """Median of ``values`` per hour of the week, taking the hour of the day's or the whole's where thin."""
    week, _ = median_by_group(hour, values, HOURS_PER_WEEK)
    day, _ = median_by_group((hour % HOURS_PER_DAY).astype(np.int16), values, HOURS_PER_DAY)
    whole = float(np.median(values)) if default is None else default
    result: npt.NDArray[np.float64] = np.where(use_week, week, np.where(use_day, np.tile(day, DAYS), whole))
    return np.nan_to_num(result, nan=whole)


def device_hour_means(cell: npt.NDArray[np.int32], residual: npt.NDArray[np.float32], keep: npt.NDArray[np.bool_],
                      n_devices: int, use_week: npt.NDArray[np.bool_],
                      use_day: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """[devices, 168] mean of the kept residuals per device and hour of the week (0 where none).

    ``cell`` is device * 168 + hour of the week.

    A thin hour of the week (for the fleet) takes the device's mean at that hour of the day, and
    where that is thin too, 0 (the device's level).
    """
    kept = cell[keep]
    sums = np.bincount(kept, weights=residual[keep], minlength=n_devices * HOURS_PER_WEEK).reshape(n_devices, -1)
    counts = np.bincount(kept, minlength=n_devices * HOURS_PER_WEEK).reshape(n_devices, -1).astype(np.float64)
    day_sums = np.tile(sums.reshape(n_devices, DAYS, HOURS_PER_DAY).sum(axis=1), DAYS)
    day_counts = np.tile(counts.reshape(n_devices, DAYS, HOURS_PER_DAY).sum(axis=1), DAYS)
    sums = np.where(use_week, sums, np.where(use_day, day_sums, 0.0))
    counts = np.where(use_week, counts, np.where(use_day, day_counts, 1.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / counts, 0.0)
    return means.astype(np.float32)


def shared_rhythms(means: npt.NDArray[np.float32], eligible: npt.NDArray[np.bool_],
                   rank: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(basis [168, rank], weights [devices, rank]): the main rhythms and each device's share of them.

    The basis comes from the devices with their own band (at most 20,000, evenly spread, so it is
    deterministic and quick); every device's weights are its hourly means projected on it.
    """
    rows = np.flatnonzero(eligible)
    rank = min(rank, len(rows), HOURS_PER_WEEK)
    if rank == 0:
        return np.zeros((HOURS_PER_WEEK, 0), np.float32), np.zeros((len(means), 0), np.float32)
    rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), _BASIS_DEVICES)).astype(np.int64)]
    _, _, vt = np.linalg.svd(means[rows].astype(np.float64), full_matrices=False)
    basis = vt[:rank].T
    # An SVD's signs are arbitrary; fix them so the same data always gives the same bytes.
    basis *= np.where(basis[np.abs(basis).argmax(axis=0), np.arange(rank)] < 0, -1.0, 1.0)
    weights = means @ basis.astype(np.float32)
    return basis.astype(np.float32), weights.astype(np.float32)
