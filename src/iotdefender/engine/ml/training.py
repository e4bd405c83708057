"""Training: from one behavior's datapoints over the trailing period to a ``BehaviorModel``.

Deterministic (the only randomness, the sample of a very large training set, is seeded) and pure
(time and data are arguments), so the service can train in a worker and a test can train twice
and compare bytes. The steps, on the log scale (model.py says why log):

1. the fleet's median and spread per slot of the week (clock.py) — falling back to the slot of the
   day, then to the whole period, where a slot of the week has too few datapoints;
2. per device with enough history, its level relative to the fleet and its spread, as clipped
   moments, so that anomalies inside the training window barely move them;
3. its own rhythm, as weights on the fleet's main rhythms (seasonal.py), then level and spread again
   around level + rhythm; where that spread is much wider than the noise the device's successive
   differences show, its level changed inside the window (shifts.py), and when the part after the
   change is the shorter, the model is fitted again without it;
   when training samples and the datapoints come grouped by device (the service's trainer reads
   them so), each device's level, rhythm weights and spread are fitted again from all its
   datapoints in one pass, and the rhythm basis comes from all the datapoints of 5,000 devices
   (refit.py): the sample then serves only what the fleet shares; there the second fit is of
   the changed devices alone, from all their datapoints before the change, and their sampled
   datapoints after it leave the sample (3a');
4. the fleet's per-slot multiplier of those spreads (quiet nights, busy mornings);
5. the thresholds: per cohort of devices with alike tails, the score that the level's share of
   training datapoints reaches, never below a floor (calibration.py). How heavy a device's tail is
   comes from all its datapoints when the statistics had to be sampled and the datapoints come
   grouped by device (tails.py; then every sampled score calibrates), else from its scores: every
   other one places the device in the pool whose thresholds the rest calibrate, and all of them
   choose the cohort that judges it (whose thresholds are then never below those its judged
   devices' calibrating scores give; a near-normal cohort's count the share of heavy tails that
   looked near-normal on half their scores, as some judged by it look so on all of theirs:
   calibration.mixed_thresholds). In the first case a lasting anomaly inside the window
   (a nightly bump, a level that moved) does not show in how heavy the tail is, so the devices that
   crowd a near-normal cohort's tail get a cohort of their own: those with many datapoints far off
   their fit (refit.py counts them outside the sample: calibration.crowding_by_counts), then those
   whose sampled scores crowd it (calibration.crowding_devices). With 1,000 values a device or more,
   the devices whose tail a test tells apart as heavier than normal noise's get cohorts of their
   own (calibration.Layout).

Integer data (counts) get a floor on every spread from a Poisson count's (discrete.py), so a
metric that is 0 most of the time does not get a spread of ``min_scale`` and thresholds of 100,
and small ones a step 4 that is a mean shrunk by its sampling noise instead of a median
(discrete.py).

Few datapoints per device and slot (a small fleet trained over a week and a bit): the fleet's
per-slot centres and spreads (step 1) and the slot multipliers (step 4) keep only what stands out
of their sampling noise, the rhythm basis (step 3, not sampled) only the components above its
noise, and the tail cohorts (step 5) are no more than the devices and scores fill (shrinkage.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from iotdefender.engine.ml import calibration, discrete, refit, seasonal, shifts, shrinkage, tails
from iotdefender.engine.ml.clock import SeasonalClock, between_table
from iotdefender.engine.ml.data import TrainingData
from iotdefender.engine.ml.model import BehaviorModel, DeviceBands, ModelSummary
from iotdefender.engine.ml.robust import MAD_TO_STD, Segments, clipped_location_and_std
from iotdefender.engine.ml.settings import TrainingSettings

_MIN_SAMPLED_PER_DEVICE = 20
_RHYTHM_CLIP = 4.0
_HEAVY_CAP = 8.0  # scores are capped here for a device's kurtosis, so one anomaly in training does not decide it
# Sampled but grouped by device: the rhythm basis from all the datapoints of this many devices
# (refit.shared_basis; ~12 datapoints a slot each instead of the sample's ~0.7).
_FULL_BASIS_DEVICES = 5_000
_DIFFERENCE_CAP = 5.0  # the same for successive differences (tails.py): one capped pair adds 0.3 to 4,000's kurtosis
# Sampled and grouped: a tail cohort whose devices' difference kurtosis all stay below this (noise
# of kurtosis 4 at most: near normal) has alike tails, and the devices crowding its tail leave it
# (calibration.crowding_by_counts, crowding_devices). Their tests assume alike tails; the heaviest
# cohorts span normal to Student-t noise (3.4-6.3 in the benchmark), where they would take the
# spikiest devices' noise for crowding (a synthetic cohort with a sixth of its devices Student-t:
# 565-729 of their scores taken; not measured on the benchmark without this limit).
_ALIKE_KURTOSIS = 3.5


def train(data: TrainingData, *, trained_at: float, settings: TrainingSettings) -> BehaviorModel:
    """Raises ``ValueError`` without datapoints (the service waits for its minimum before training).

    When a device's level changed inside the window and what follows the change is the shorter
    part (shifts.py), the model is fitted a second time without that part: the whole window again
    when training did not sample; when it sampled and the datapoints come grouped by device, those
    devices alone from all their datapoints before the change (``_refit_before_changes``), which
    costs a pass over their datapoints instead of a second training. The summary still counts
    every datapoint of the window.
    """
    if len(data) == 0:
        raise ValueError("no datapoints to train on")
    model, moved, center = _fit(data, trained_at, settings, len(data))
    summary = model.summary()
    # Sampled: done inside ``_fit`` when the datapoints come grouped (3a'); a whole second training
    # at 100k devices x 14 days with a fifth of them contaminated took 72 s instead of 30 s
    # (bench/README.md). Sampled without that pass (not grouped: nothing is found changed; rank 0),
    # the first fit stays.
    if not moved.any() or summary.datapoints_used < summary.datapoints:
        return model
    clock = settings.clock
    part = shifts.bulk(data, moved, _center_at(clock, center), margin=clock.hour_seconds * 24)
    if not len(part.devices):
        return model
    keep = part.keep(data)
    bulk = TrainingData(data.device[keep], data.devices, data.time[keep], data.value[keep])
    return _fit(bulk, trained_at, settings, len(data))[0]


def _fit(data: TrainingData, trained_at: float, settings: TrainingSettings, window: int,
         ) -> tuple[BehaviorModel, npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """One fit of the model on ``data`` (of a window of ``window`` datapoints); with it the devices
    whose level changed inside the window and the fleet's centre per slot."""
    rng = np.random.default_rng(settings.seed)
    n_devices = len(data.devices)
    f32 = np.float32
    picked = _sample(len(data), settings.max_datapoints, rng)
    # Datapoints grouped by device tell each device's noise from all of them (tails.py); sampled,
    # its tail too.
    by_device = tails.grouped(data.device)
    all_tails = picked is not None and by_device
    device = data.device if picked is None else data.device[picked]
    order = Segments.order(device)
    if order is not None:
        picked = order if picked is None else picked[order]
        device = device[order]
    values = data.value if picked is None else data.value[picked]
    nonnegative = bool(np.min(values) >= 0)  # of the sample: one pass less over the full set
    counts = discrete.is_count(values)  # spreads get a Poisson floor (discrete.py)
    y = tails.log32(values, nonnegative)
    del values
    clock = settings.clock
    first, second, fraction = clock.between_all(data.time if picked is None else data.time[picked])
    slot = np.where(fraction < 0.5, first, second)  # the slot each datapoint falls in
    sample_index = picked if all_tails and picked is not None else np.zeros(0, dtype=np.int64)
    del picked
    sampled = np.bincount(device, minlength=n_devices)
    segments = Segments(sampled)
    scale_up = len(data) / len(y)

    # 1. The fleet's rhythm and spread per slot of the week (a line between slot centres). The
    # rhythm is the median per slot of each value less its device's level, plus the fleet's median:
    # the median of the values themselves lands on whichever kind of device a slot happens to have
    # more of when the fleet has two kinds far apart (half at 2,000 bytes, half at 200,000: slot
    # centres 2,684 then 190,768, devices' levels could not follow, 4 % false alarms at LOW and
    # bands 52-86,327 around 2,000 in an operator's trial with ~60 datapoints a slot).
    fallbacks = seasonal.Fallbacks(np.bincount(slot, minlength=clock.slots) * scale_up, settings.min_bucket_datapoints)
    fleet = _sample(len(y), settings.fleet_sample, rng)
    fleet = np.arange(len(y)) if fleet is None else fleet
    fleet_level = float(np.median(y[fleet]))
    relative = y[fleet] - _levels(segments, y, sampled, fleet_level)[device[fleet]]
    relative_center = fallbacks.median(slot[fleet], relative)
    center = relative_center + fleet_level
    # What the centres' sampling noise is of: the values' spread around their device's level.
    noise = np.maximum(MAD_TO_STD * fallbacks.median(slot[fleet], np.abs(relative - relative_center[slot[fleet]])),
                       settings.min_scale)
    del relative, relative_center
    residual = y - between_table(center.astype(f32), first, second, fraction)
    del y
    fleet_scale = np.maximum(MAD_TO_STD * fallbacks.median(slot[fleet], np.abs(residual[fleet])), settings.min_scale)
    # Few datapoints a slot: the centres and spreads keep of their slot-to-slot differences only
    # what stands out of their sampling noise (shrinkage.py; a median's variance is pi/2 a mean's).
    behind = fallbacks.counts(slot[fleet])
    shrunk = shrinkage.toward(center, shrinkage.per_count(np.pi / 2 * np.square(noise), behind), behind)
    if shrunk is not center:
        residual -= between_table((shrunk - center).astype(f32), first, second, fraction)
        center = shrunk
    fleet_scale = np.exp(shrinkage.toward(np.log(fleet_scale), shrinkage.per_count(shrinkage.LOG_MAD_NOISE, behind),
                                          behind))
    fleet_std = float(np.std(residual[fleet])) if counts else 0.0
    if counts:
        fleet_scale = discrete.floor(fleet_scale, center, fleet_std)

    # 2. Each device's level and spread.
    location, spread = clipped_location_and_std(segments, residual)
    full = sampled * scale_up  # the sample is stratified: a device's share of it is its share of the whole
    own = (full >= settings.min_device_datapoints) & (sampled >= _MIN_SAMPLED_PER_DEVICE) & np.isfinite(spread)
    location = np.where(own, np.nan_to_num(location), 0.0).astype(f32)
    spread = np.maximum(np.nan_to_num(spread, nan=settings.min_scale), settings.min_scale).astype(f32)
    own_point = segments.spread(own)
    all_own = bool(own_point.all())
    # How far the fleet's datapoints are from its centre, signed (step 5: the thresholds of the
    # devices judged against the fleet): every device's level as well as its noise, as a device the
    # model knows nothing of is any of them. Only the few devices without a band of their own were
    # taken, and below 1,000 of their datapoints (every fleet whose devices all have their own band)
    # the devices' noise alone: where a fifth of a fleet sat at 100 times the others' level, every
    # normal datapoint of a new device of that kind was HIGH until it had a band of its own
    # (tests/unit/test_ml_fleet_reach.py).
    fleet_scores = (residual[fleet] / fleet_scale.astype(f32)[slot[fleet]]).astype(f32)

    # 3. Each device's rhythm, then its level and spread around it.
    residual -= segments.spread(location)
    full_fit: refit.FullFit | None = None
    left_out = np.zeros(0, dtype=np.int64)  # sampled datapoints after a change (3a')
    fitted_on = sampled  # datapoints each device's centre was fitted on
    basis = np.zeros((clock.slots, 0), f32)
    weights = np.zeros((n_devices, 0), f32)
    if settings.rank and own.any():
        row = segments.spread(np.arange(n_devices, dtype=np.int32) * clock.slots)
        first_cell, second_cell = row + first, row + second
        del row
        keep = own_point
        basis64 = refit.shared_basis(data, clock, center, location, own, fallbacks, settings.rank,
                                     nonnegative=nonnegative, devices=_FULL_BASIS_DEVICES) if all_tails else \
            seasonal.shared_basis(segments, slot, residual, keep, own, fallbacks, settings.rank)
        weights64 = seasonal.fit_weights(segments, slot, residual, keep, fallbacks, basis64)
        # Refit without the datapoints far from the first fit (anomalies inside the training window).
        fitted = residual - between_table((weights64 @ basis64.T).astype(f32).ravel(), first_cell, second_cell, fraction)
        _, first_spread = clipped_location_and_std(segments, fitted, rounds=1,
                                                   start=(np.zeros(n_devices), spread.astype(np.float64)))
        first_spread = np.nan_to_num(first_spread, nan=1.0)
        if all_tails:
            # 3a. Sampled, but grouped by device: each device's level, weights and spread from all its
            # datapoints (refit.py), starting from this first fit; the sample's residuals follow.
            del fitted
            weights64[~own] = 0.0
            basis, weights = basis64.astype(f32), weights64.astype(f32)
            sample_fit = refit.SampleFit(location, weights, first_spread, spread)
            full_fit = refit.refit(data, clock, center, basis64, fallbacks, sample_fit, sample_index,
                                   nonnegative=nonnegative, rhythm_clip=_RHYTHM_CLIP, cap=_DIFFERENCE_CAP)
            # 3a'. Devices whose level changed inside the window, fitted again before the change.
            full_fit, left_out = _refit_before_changes(data, full_fit, sample_fit, own, segments, sample_index,
                                                       settings, center, basis64, fallbacks, nonnegative=nonnegative)
            refitted = np.where(own, full_fit.location, location).astype(f32)
            weights = np.where(own[:, None], full_fit.weights, weights).astype(f32)
            moved_by = (weights @ basis.T + (refitted - location)[:, None]).astype(f32)
            residual -= between_table(moved_by.ravel(), first_cell, second_cell, fraction)
            del moved_by
            location[:] = refitted
            spread = np.where(own, np.maximum(full_fit.spread, settings.min_scale), spread).astype(f32)
            fitted_on = full_fit.datapoints
        else:
            keep = own_point & (np.abs(fitted) <= segments.spread((_RHYTHM_CLIP * first_spread).astype(f32)))
            del fitted
            prior = seasonal.cohort_prior(weights64, first_spread, segments.sum(keep), own, clock.slots)
            weights64 = seasonal.fit_weights(segments, slot, residual, keep, fallbacks, basis64, prior)
            weights64[~own] = 0.0
            del keep
            basis, weights = basis64.astype(f32), weights64.astype(f32)
            residual -= between_table((weights @ basis.T).ravel(), first_cell, second_cell, fraction)  # [devices, slots]
            shift, spread2 = clipped_location_and_std(segments, residual, rounds=1,
                                                      start=(np.zeros(n_devices), spread.astype(np.float64)))
            shift = np.where(own, np.nan_to_num(shift), 0.0).astype(f32)
            residual -= segments.spread(shift)
            location += shift
            spread = np.where(own, np.maximum(np.nan_to_num(spread2, nan=settings.min_scale), settings.min_scale),
                              spread).astype(f32)
        del first_cell, second_cell
    if len(left_out):
        kept = np.ones(len(residual), dtype=bool)
        kept[left_out] = False
        residual, slot, own_point, device = residual[kept], slot[kept], own_point[kept], device[kept]
        first, second, fraction = first[kept], second[kept], fraction[kept]
        sampled = np.bincount(device, minlength=n_devices)
        segments = Segments(sampled)
        del kept

    if counts:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = segments.sum(residual) / sampled
            plain = np.sqrt(np.maximum(segments.sum(np.square(residual, dtype=np.float64)) / sampled - mean * mean, 0.0))
        spread = discrete.floor(spread, float(np.median(center)) + location, np.nan_to_num(plain)).astype(f32)

    # 3b. Devices whose level changed inside the window (shifts.py): ``train`` fits again without
    # what follows the change when that is the shorter part (not sampled; sampled and grouped, 3a'
    # did). One pass over every datapoint.
    differences = full_fit.differences if full_fit is not None else \
        tails.differences(data.device, data.value, n_devices, spread, cap=_DIFFERENCE_CAP,
                          nonnegative=nonnegative) if by_device else None
    moved = np.zeros(n_devices, dtype=bool) if differences is None else \
        shifts.changed(differences.rms, differences.count, own)

    # 4. The slot-of-week multiplier of a device's spread.
    below = residual < 0  # each side of the centre gets thresholds of its own (step 5)
    standardised = np.abs(residual)
    standardised /= segments.spread(spread)
    del residual
    shape = np.ones(clock.slots)
    if own.any():
        some = _sample(len(standardised), settings.fleet_sample, rng)
        some = np.arange(len(standardised)) if some is None else some
        if not all_own:
            some = some[own_point[some]]
        if counts and discrete.small(center):
            shape = discrete.slot_shape(fallbacks, slot[some], standardised[some])
        else:
            typical = fallbacks.median(slot[some], standardised[some], default=1 / MAD_TO_STD)
            # A slot where most datapoints sit exactly on the fit (a constant metric, a step-shaped
            # rhythm's flat parts) has no spread of its own to scale by: it keeps the device's.
            # Few datapoints a slot: only as much of the slots' differences as stands out of their
            # sampling noise (shrinkage.py).
            spread_of = typical > 0
            behind = fallbacks.counts(slot[some])
            log_shape = np.log(np.where(spread_of, MAD_TO_STD * typical, 1.0))
            log_shape[spread_of] = shrinkage.toward(
                log_shape[spread_of], shrinkage.per_count(shrinkage.LOG_MAD_NOISE, behind[spread_of]), behind[spread_of])
            shape = np.where(spread_of, np.clip(np.exp(log_shape), 0.25, 4.0), 1.0)
    scores = standardised
    scores /= shape.astype(f32)[slot]
    del standardised, slot, first, second, fraction

    # 5. Thresholds per tail cohort (0: devices judged against the fleet). Cross-fitted: every other
    # datapoint of a device says which cohort's thresholds the others help set — sorting devices by
    # the same scores that calibrate them would make the light cohorts look lighter than their
    # devices' next datapoints will be. Which cohort judges a device is read from all its scores:
    # its next datapoints are none of them, so no bias, and half its scores misplaced devices with
    # few datapoints (bench/README.md, "Which cohort judges a device").
    shares = [share for _, share in settings.exceedance]
    floors = [floor for _, floor in settings.min_scores]
    # A small count's scores sit in clusters, which a tail fit reads as a heavy tail (calibration.SMALL_COUNT_SHAPE).
    small_count = counts and discrete.small(center)
    max_shape = calibration.SMALL_COUNT_SHAPE if small_count else calibration.MAX_SHAPE
    # Above its centre a small count's lightest tail is a Poisson count's, far lighter on the log
    # scale than the normal's that bounds the other metrics' thresholds, and lighter than the
    # floors: those held a count of 2 a window to a HIGH edge of 31 and a LOW one of 14, where a
    # Poisson count's are 11 and 8 (discrete.poisson_scores). Not a count that barely varies (three
    # listening ports for two weeks): the floors are what keeps a fourth from HIGH there
    # (discrete.varies). Below its centre a count stops at 0, a cluster of its own scores (a count
    # of 3 is 0 in 5 % of its windows): the floors stay there.
    lightest: list[float] | None = None
    floors_below = [max(floor, normal) for floor, normal in zip(floors, calibration.normal_quantiles(shares))]
    if small_count and discrete.varies(center, fleet_std):
        lightest = [min(normal, poisson) for normal, poisson in zip(floors_below, discrete.poisson_scores(center, shares))]
        floors = [min(floor, light) for floor, light in zip(floors, lightest)]
    sorting = np.zeros(len(scores), dtype=bool)
    if all_tails and differences is not None:
        # How heavy a tail is, from the successive differences of all datapoints (tails.py): no
        # score sorts, all of them calibrate.
        heaviness = pooled_by = differences.kurtosis
        told, told_pool = (calibration.heavier_than_normal(differences.kurtosis, differences.count),) * 2
        counted: npt.NDArray[np.number] = differences.count
    else:
        sorting[::2] = True
        pooled_by = _kurtosis(scores, segments, sorting)
        heaviness = _kurtosis(scores, segments, None)
        # Told apart as heavy on all the scores but the largest: one anomaly in the window is not a
        # heavy tail (a spike planted in a first build's window made its device "heavy" and left the
        # near-normal cohorts' tails to the half of the scores that held it).
        counted = segments.counts
        told = calibration.heavier_than_normal(_kurtosis(scores, segments, None, without_largest=True),
                                               np.maximum(counted - 1, 0))
        told_pool = calibration.heavier_than_normal(_kurtosis(scores, segments, sorting, without_largest=True),
                                                    np.maximum(segments.sum(sorting) - 1, 0))
    # No more cohorts than the devices and their calibrating scores fill (shrinkage.py); no cohort
    # holds both devices whose tail is told apart from normal noise and devices whose is not
    # (calibration.Layout).
    layout = calibration.Layout(told, counted, own, shrinkage.tail_cohorts(
        settings.tail_cohorts, int(own.sum()), int(np.count_nonzero(own_point & ~sorting))))
    n_cohorts = layout.n_cohorts
    cohort = layout.cohorts(heaviness, own)
    pool = cohort if pooled_by is heaviness else layout.cohorts(pooled_by, own, told_pool)
    point_cohort = segments.spread(pool)[~sorting]
    # Each calibrating score's judging cohort, where it differs from its pool (below).
    judged_point = None if pool is cohort else segments.spread(cohort)[~sorting]
    # And whether its device's scores are heavy-tailed without their largest (below: one anomaly
    # in the window is not a heavy tail).
    heavy_point = None if pool is cohort else \
        segments.spread(own & (_kurtosis(scores, segments, None, without_largest=True) > _ALIKE_KURTOSIS))[~sorting]
    # The calibrating scores, signed: each side of the centre gets its own thresholds
    # (calibration.sides); the cohorts above came from the distances alone.
    scores = scores[~sorting]
    np.negative(scores, out=scores, where=below[~sorting])
    calibrating_device = device[~sorting]
    del sorting, below
    by_cohort = np.argsort(point_cohort, kind="stable")  # a radix sort of bytes
    bounds = np.concatenate(([0], np.cumsum(np.bincount(point_cohort, minlength=n_cohorts + 1))))
    grouped = scores[by_cohort]
    # Sampled, the cohorts say how heavy a device's noise is, not whether its window held a lasting
    # anomaly (a new behaviour, a level that moved) or the model misses part of it: the devices that
    # crowd a cohort's tail (calibration.crowding_devices) leave it for a cohort of their own, after
    # the others, as the scores' own kurtosis sends them to the heaviest cohorts when training does
    # not sample. Only in cohorts of alike, near-normal tails (``_ALIKE_KURTOSIS``) — and, sampled
    # or not, where the devices are too few for more than one cohort, which no kurtosis can sort:
    # in an outside-in run of 20 devices one that sat at 26 times its level for two stretches of
    # its window made the only cohort's HIGH 8.3 for all (a band up to 262 connections around 3,
    # another device's 20-fold flood only MEDIUM; tests/unit/test_ml_shifts.py). Their cohort is one
    # more row, and a cohort is a byte.
    owner = calibrating_device[by_cohort] if n_cohorts < 255 else None
    alike = np.ones(n_cohorts + 1, dtype=bool)
    np.logical_and.at(alike, cohort[own], heaviness[own] <= _ALIKE_KURTOSIS)
    # All its datapoints outside the sample first (refit.py), then the sample's scores.
    crowding = calibration.crowding_by_counts(full_fit.beyond, full_fit.outside, cohort, own & alike[cohort]) \
        if owner is not None and full_fit is not None else np.zeros(n_devices, dtype=bool)
    crowded_scores = []
    # Devices' levels among the fleet's scores, not only noise (calibration.within_reach).
    per_cohort = [calibration.within_reach(calibration.thresholds(fleet_scores, shares, floors, max_shape, lightest=lightest),
                                           fleet_scores, shares, floors, lightest=lightest)]
    for c in range(1, n_cohorts + 1):
        members = grouped[bounds[c]:bounds[c + 1]]
        if owner is not None and ((all_tails and alike[c]) or n_cohorts == 1):
            whose = owner[bounds[c]:bounds[c + 1]]
            rest = ~crowding[whose]
            crowding[calibration.crowding_devices(np.abs(members[rest]), whose[rest])] = True
            leaving = crowding[whose]
            crowded_scores.append(members[leaving])
            members = members[~leaving]
        per_cohort.append(calibration.thresholds(members, shares, floors, max_shape, lightest=lightest) if len(members) else per_cohort[0])
    if judged_point is not None and heavy_point is not None:
        # A cohort's thresholds are the higher of those its pool calibrates and those the devices it
        # judges calibrate. The pool is unbiased for its devices (placed by the other half of their
        # scores) but not for the cohort's: all its scores place a device better than half of them,
        # so the heaviest cohort judges Student-t devices that half their scores placed lighter (4
        # of its 11 in one training of 200 devices x 384 datapoints), and its pool's tail is lighter
        # than its devices'. The judged members' calibrating scores helped place them, which biases
        # a light cohort's thresholds low and a heavy one's high: neither is taken lower than the
        # other (bench/README.md, "The thresholds' own uncertainty").
        by_judged = np.argsort(judged_point, kind="stable")
        judged_bounds = np.concatenate(([0], np.cumsum(np.bincount(judged_point, minlength=n_cohorts + 1))))
        judged_scores = scores[by_judged]
        # Without the crowding devices' scores (above), which would lift the cohort's thresholds again.
        kept_judged = ~crowding[calibrating_device[by_judged]]
        del by_judged
        for c in range(1, n_cohorts + 1):
            members = judged_scores[judged_bounds[c]:judged_bounds[c + 1]]
            members = members[kept_judged[judged_bounds[c]:judged_bounds[c + 1]]]
            if len(members):
                per_cohort[c] = [max(a, b) for a, b in zip(per_cohort[c], calibration.thresholds(members, shares, floors, max_shape, lightest=lightest))]
        del judged_scores, kept_judged
        # A heavy-tailed device whose scores look normal is judged by a near-normal cohort and meets
        # its HIGH threshold far more often than stated: no placement tells it from the normal
        # devices (on 200 devices x 384 datapoints, 0.85 Student-t device a training, 16 of 38 HIGH
        # on fresh normal data in 20 trainings). How often a heavy tail hides is seen in the halves:
        # the share of a near-normal pool's scores whose devices are heavy-tailed on all their
        # scores but their largest (a kurtosis above ``_ALIKE_KURTOSIS``: one anomaly in the window
        # is not a heavy tail) while the other half of their scores looked near-normal. That share
        # of the heavy devices' tail goes into the near-normal cohorts' tails (never lowering their
        # thresholds): 0.64 % on average on that fleet, where 0.49 % of the devices near-normal
        # cohorts judged were hidden Student-t ones (bench/README.md, "Heavy tails that look normal").
        looked_alike = alike[point_cohort] & (point_cohort > 0)
        hidden = float(np.count_nonzero(looked_alike & heavy_point)) / max(int(np.count_nonzero(looked_alike)), 1)
        if hidden > 0:
            heavy_scores = scores[heavy_point & ~crowding[calibrating_device]]
            for c in range(1, n_cohorts + 1):
                members = grouped[bounds[c]:bounds[c + 1]]
                if owner is not None:
                    members = members[~crowding[owner[bounds[c]:bounds[c + 1]]]]
                if alike[c] and len(members):
                    mixed = calibration.mixed_thresholds(members, heavy_scores, hidden, shares, floors, max_shape, lightest=lightest)
                    per_cohort[c] = [max(a, b) for a, b in zip(per_cohort[c], mixed)]
            del heavy_scores
        del judged_point, heavy_point
    if lightest is not None:  # below the centre, as the other metrics' (above)
        levels = len(shares)
        per_cohort = [row[:levels] + [max(value, floor) for value, floor in zip(row[levels:], floors_below)]
                      for row in per_cohort]
    tail_rows = per_cohort[1:]  # the summary's median: over the tail cohorts, not the crowding devices'
    if crowding.any():
        per_cohort.append(calibration.thresholds(np.concatenate(crowded_scores), shares, floors, max_shape, lightest=lightest))
        cohort[crowding] = n_cohorts + 1

    # The scores above are in-sample: a fit of p numbers to a device's n datapoints leaves residuals
    # smaller than a new datapoint's by about sqrt((n - p) / (n + p)). Their shape sets the
    # thresholds; new datapoints are judged with the spread widened by that factor (6 % at 300
    # datapoints and rank 16, under 1 % at 4,000). p is the device's level and rank weights, and its
    # share of the basis, which was fitted to the same datapoints: a rank-k basis of the slot means
    # of d devices has k (slots - k) degrees of freedom, k (slots - k) / d a device — 18 more on
    # 200 devices at rank 11, where fresh normal datapoints came out 3.6 % wider than the spread
    # widened for 12 and reached LOW 1.4 and HIGH 3 times as often as stated (bench/README.md,
    # "The thresholds' own uncertainty"); 1-2 more at 2,000 devices and more, under 0.1 % wider.
    rank = basis.shape[1]
    fitted_by = min(len(seasonal.basis_devices(own, rank, clock.slots)[0]),
                    _FULL_BASIS_DEVICES if all_tails else len(own)) if rank else 0
    parameters = 1 + rank + (rank * (clock.slots - rank) / fitted_by if fitted_by else 0.0)
    spread = (spread * np.sqrt((fitted_on + parameters) / np.maximum(fitted_on - parameters, 1))).astype(f32)

    bands = DeviceBands(
        center=center, fleet_scale=fleet_scale, shape=shape, basis=basis,
        cohort_thresholds=np.array(per_cohort, dtype=np.float64),
        devices=[name for name, keep in zip(data.devices, own.tolist()) if keep],
        offset=location[own], scale=spread[own], weights=np.ascontiguousarray(weights[own]),
        cohort=cohort[own], nonnegative=nonnegative)
    start, end = data.window
    summary = ModelSummary(
        datapoints=window, datapoints_used=len(device), devices=int(np.count_nonzero(full)),
        devices_with_own_band=int(own.sum()), window_start=start, window_end=end, trained_at=trained_at,
        thresholds=_median_thresholds(tail_rows or per_cohort[:1], settings, 0),
        thresholds_below=_median_thresholds(tail_rows or per_cohort[:1], settings, len(settings.exceedance)))
    return BehaviorModel(settings.clock, bands, summary), moved, center


def _median_thresholds(rows: list[list[float]], settings: TrainingSettings, start: int) -> dict[str, float]:
    """Per level, the median over ``rows`` (cohorts' thresholds) of one side's (from ``start``)."""
    return {level.value: round(float(np.median([row[start + i] for row in rows])), 4)
            for i, (level, _) in enumerate(settings.exceedance)}


def _kurtosis(scores: npt.NDArray[np.float32], segments: Segments, which: npt.NDArray[np.bool_] | None,
              *, without_largest: bool = False) -> npt.NDArray[np.float64]:
    """Per device the kurtosis of its scores (of ``which`` of them, or all; capped at ``_HEAVY_CAP``;
    ``without_largest``: all but the largest), 3 for a normal distribution: it tells a spiky device
    from a smooth one on a few hundred datapoints, where counting rare large scores cannot."""
    squares = np.minimum(scores, np.float32(_HEAVY_CAP))
    squares *= squares
    if which is not None:
        squares *= which
    n = segments.sum(which) if which is not None else segments.counts.astype(np.float64)
    largest = segments.max(squares) if without_largest else 0.0
    moment2 = segments.sum(squares) - largest
    squares *= squares
    moment4 = segments.sum(squares) - np.square(largest)
    n = n - 1 if without_largest else n
    with np.errstate(invalid="ignore", divide="ignore"):
        result: npt.NDArray[np.float64] = np.nan_to_num(moment4 * n / (moment2 * moment2))
    return result


def _refit_before_changes(data: TrainingData, full_fit: refit.FullFit, sample_fit: refit.SampleFit,
                          own: npt.NDArray[np.bool_], segments: Segments, sample_index: npt.NDArray[np.int64],
                          settings: TrainingSettings, center: npt.NDArray[np.float64], basis: npt.NDArray[np.float64],
                          fallbacks: seasonal.Fallbacks, *, nonnegative: bool,
                          ) -> tuple[refit.FullFit, npt.NDArray[np.int64]]:
    """Sampled but grouped by device (refit.py): the devices whose level changed inside the window
    and whose part after the change is the shorter (shifts.py) fitted again, alone, from all their
    datapoints before it, from the sample's same start; and which sampled datapoints (positions in
    the sample, ``sample_index`` being their indices into ``data``) fall after it, to leave the
    sample as they leave the window when training does not sample.

    Only those devices: the fleet's statistics (centre, rhythms, slot shape) are the sample's, which
    a fifth of the fleet moving barely moves, and fitting the whole window again doubled training's
    time at 100k devices (bench/README.md). Their tail cohort follows from the new differences.
    """
    none = np.zeros(0, dtype=np.int64)
    changed = shifts.changed(full_fit.differences.rms, full_fit.differences.count, own)
    if not changed.any():
        return full_fit, none
    clock = settings.clock
    part = shifts.bulk(data, changed, _center_at(clock, center), margin=clock.hour_seconds * 24)
    if not len(part.devices):
        return full_fit, none
    cut = part.devices
    is_cut = np.zeros(len(own), dtype=bool)
    is_cut[cut] = True
    candidates = np.flatnonzero(segments.spread(is_cut))  # their sampled datapoints
    at = sample_index[candidates]
    position = np.minimum(np.searchsorted(part.index, at), len(part.index) - 1)
    kept = part.index[position] == at
    # The rhythm is pulled towards the nearest rhythm cohort of the devices that did not change
    # (seasonal.nearest_cohort_prior), as the fit of a window not sampled pulls it towards its
    # cohort's: the days before the change may not hold every day of the week, and with the small
    # ridge alone, a level step on weekdays split between the level and a weekday-weekend rhythm
    # (alike on weekdays): a cohort of devices that shifted together on day 6.35 got a Sunday 2.7-3
    # of their noise off, 40 MEDIUM alarms a device in the week after (bench/README.md).
    prior = seasonal.nearest_cohort_prior(full_fit.weights.astype(np.float64), full_fit.spread,
                                          full_fit.datapoints.astype(np.float64), own & ~changed, cut,
                                          settings.clock.slots)
    start = refit.SampleFit(sample_fit.location[cut], sample_fit.weights[cut], sample_fit.spread[cut],
                            sample_fit.level_spread[cut])
    again = refit.refit(part.data(data), clock, center, basis, fallbacks, start, position[kept],
                        nonnegative=nonnegative, rhythm_clip=_RHYTHM_CLIP, cap=_DIFFERENCE_CAP, prior=prior)
    return full_fit.with_part(cut, again), candidates[~kept]


def _levels(segments: Segments, y: npt.NDArray[np.float32], sampled: npt.NDArray[np.int64],
            typical: float) -> npt.NDArray[np.float32]:
    """Each device's level over the window (a clipped mean of its log values: anomalies barely move
    it); ``typical`` for a device with too few datapoints to tell."""
    location, _ = clipped_location_and_std(segments, y, rounds=1)
    enough = (sampled >= _MIN_SAMPLED_PER_DEVICE) & np.isfinite(location)
    return np.where(enough, location, typical).astype(np.float32)


def _center_at(clock: SeasonalClock, center: npt.NDArray[np.float64],
               ) -> Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]:
    """The fleet's ``center`` (per slot of the week) at any times: the line between slot centres,
    as refit.py's pass reads it (``refit.along``, float32: shifts.bulk reads ~35M datapoints at
    100k devices with a fifth contaminated)."""
    table = center.astype(np.float32)[None, :]

    def at(times: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        first, fraction = clock.first_of(times)
        return refit.along(table, first, fraction).astype(np.float64)
    return at


def _sample(n: int, limit: int, rng: np.random.Generator) -> npt.NDArray[np.int64] | None:
    """At most ``limit`` of ``range(n)`` in increasing order, one at random from each block of
    ``ceil(n / limit)`` (stratified: uniform whatever the order of the datapoints); None for all."""
    if n <= limit:
        return None
    block = -(-n // limit)
    picked = np.arange(0, n, block, dtype=np.int64)
    picked += rng.integers(0, block, len(picked), dtype=np.int64)
    np.minimum(picked, n - 1, out=picked)
    return picked
