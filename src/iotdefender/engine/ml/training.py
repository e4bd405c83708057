"""Training: from one behavior's datapoints over the trailing period to a ``BehaviorModel``.

Deterministic (the only randomness, the sample of a very large training set, is seeded) and pure
(time and data are arguments), so the service can train in a worker and a test can train twice
and compare bytes. The steps, on the log scale (model.py says why log):

1. the fleet's median and spread per hour of the week — falling back to the hour of the day, then
   to the whole period, where an hour of the week has too few datapoints;
2. per device with enough history, its level relative to the fleet and its spread, as clipped
   moments, so that anomalies inside the training window barely move them;
3. the fleet's per-hour multiplier of those spreads (quiet nights, busy mornings);
4. the thresholds: per confidence level a high quantile of the training datapoints' scores,
   never below a floor (``TrainingSettings``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from iotdefender.engine.ml.clock import HOURS_PER_DAY, HOURS_PER_WEEK
from iotdefender.engine.ml.data import TrainingData
from iotdefender.engine.ml.model import BehaviorModel, DeviceBands, ModelSummary, to_log_array
from iotdefender.engine.ml.robust import MAD_TO_STD, clipped_location_and_std, median_by_group
from iotdefender.engine.ml.settings import TrainingSettings

_MIN_SAMPLED_PER_DEVICE = 20


def train(data: TrainingData, *, trained_at: float, settings: TrainingSettings) -> BehaviorModel:
    """Raises ``ValueError`` without datapoints (the service waits for its minimum before training)."""
    if len(data) == 0:
        raise ValueError("no datapoints to train on")
    rng = np.random.default_rng(settings.seed)
    picked = _sample(len(data), settings.max_datapoints, rng)
    device = data.device[picked]
    y = to_log_array(data.value[picked])
    hour = settings.clock.hours_of_week(np.asarray(data.time[picked], dtype=np.float64))
    scale_up = len(data) / len(y)

    fleet = _sample(len(y), settings.fleet_sample, rng)
    weight = scale_up * len(y) / len(fleet)  # datapoints of the whole training set per sampled one
    center = _per_hour(hour[fleet], y[fleet], weight, settings)
    residual = (y - center[hour]).astype(np.float32)
    del y
    fleet_scale = np.maximum(MAD_TO_STD * _per_hour(hour[fleet], np.abs(residual[fleet]), weight, settings),
                             settings.min_scale)

    n_devices = len(data.devices)
    location, spread = clipped_location_and_std(device, residual, n_devices)
    sampled = np.bincount(device, minlength=n_devices)
    full = np.bincount(data.device, minlength=n_devices)
    own = (full >= settings.min_device_datapoints) & (sampled >= _MIN_SAMPLED_PER_DEVICE) & np.isfinite(spread)
    spread = np.maximum(np.nan_to_num(spread, nan=settings.min_scale), settings.min_scale)
    location = np.nan_to_num(location)

    # Per-device standardised residuals give the hour-of-week multiplier of a device's spread.
    own_point = own[device]
    standardised = np.where(own_point, (residual - location[device]) / spread[device], np.nan).astype(np.float32)
    shape_sample = fleet[own_point[fleet]]
    if len(shape_sample):
        shape = np.clip(MAD_TO_STD * _per_hour(hour[shape_sample], np.abs(standardised[shape_sample]),
                                               weight, settings, default=1 / MAD_TO_STD), 0.25, 4.0)
    else:
        shape = np.ones(HOURS_PER_WEEK)

    scores = np.where(own_point, np.abs(standardised) / shape[hour], np.abs(residual) / fleet_scale[hour])
    probabilities = [q for _, q in settings.quantiles]
    quantiles = np.quantile(scores, probabilities)
    low, medium, high = (max(float(q), floor) for q, (_, floor) in zip(quantiles, settings.min_scores))
    thresholds = (low, max(medium, low), max(high, medium, low))

    bands = DeviceBands(
        center=center, fleet_scale=fleet_scale, shape=shape, thresholds=thresholds,
        devices=[name for name, keep in zip(data.devices, own.tolist()) if keep],
        offset=location[own].astype(np.float32), scale=spread[own].astype(np.float32),
        nonnegative=bool(np.min(data.value) >= 0))
    start, end = data.window
    summary = ModelSummary(
        datapoints=len(data), datapoints_used=len(picked), devices=int(np.count_nonzero(full)),
        devices_with_own_band=int(own.sum()), window_start=start, window_end=end, trained_at=trained_at,
        thresholds={level.value: t for (level, _), t in zip(settings.quantiles, thresholds)})
    return BehaviorModel(settings.clock, bands, summary)


def _sample(n: int, limit: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """At most about ``limit`` of ``range(n)``, uniformly, in increasing order (memory stays sequential)."""
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    gaps = rng.geometric(limit / n, size=int(limit * 1.01) + 100)
    positions = np.cumsum(gaps) - 1
    return positions[positions < n]


def _per_hour(hour: npt.NDArray[np.int16], values: npt.NDArray[np.floating], weight: float,
              settings: TrainingSettings, *, default: float | None = None) -> npt.NDArray[np.float64]:
    """The median of ``values`` per hour of the week, with the thin-bucket fallbacks.

    A bucket with fewer than ``min_bucket_datapoints`` (counted in the full training set: ``weight``
    datapoints per sampled one) takes its hour of the day's median, and a thin hour of the day the
    whole period's (or ``default``).
    """
    week, week_count = median_by_group(hour, values, HOURS_PER_WEEK)
    day, day_count = median_by_group((hour % HOURS_PER_DAY).astype(np.int16), values, HOURS_PER_DAY)
    whole = float(np.median(values)) if default is None else default
    day_of = np.arange(HOURS_PER_WEEK) % HOURS_PER_DAY
    use_week = week_count * weight >= settings.min_bucket_datapoints
    use_day = ~use_week & (day_count[day_of] * weight >= settings.min_bucket_datapoints)
    return np.where(use_week, week, np.where(use_day, day[day_of], whole))
