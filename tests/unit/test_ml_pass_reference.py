"""refit.py's pass over every datapoint, and the helpers it runs on, against straightforward versions.

The pass is optimised for 403M datapoints (float32, chunks of whole devices, positions instead of
per-device sums, slopes once a block): these references do the same arithmetic one device at a
time in float64, the plain way, so a speed-up that moves the model fails here, while the last
bits a CPU's SIMD paths round differently do not (a pinned digest of the model did, on another
machine). A small training's thresholds are pinned too, to a tolerance (test_ml_pinned_model.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from iotdefender.engine.ml import TrainingData, refit, tails
from iotdefender.engine.ml.clock import SeasonalClock
from iotdefender.engine.ml.robust import Segments, clipped_location_and_std
from iotdefender.engine.ml.seasonal import Fallbacks, NormalEquations

DAY = 86_400.0
CLIP, RHYTHM_CLIP, CAP = 3.5, 4.0, 5.0


def _fleet(seed: int) -> tuple[TrainingData, SeasonalClock, np.ndarray, np.ndarray, refit.SampleFit, np.ndarray]:
    """Devices of uneven sizes (one empty, one of a single datapoint), a daily and a weekend rhythm,
    spikes and a level shift; irregular times; a sample; a start a little off the truth."""
    rng = np.random.default_rng(seed)
    clock = SeasonalClock()
    sizes = np.array([900, 0, 1, 1_500, 700, 2_200, 40, 1_200, 3_000, 650, 1_800, 2])
    n = len(sizes)
    device = np.repeat(np.arange(n, dtype=np.int32), sizes)
    slot = np.arange(clock.slots)
    basis = np.stack([np.sin(slot / clock.slots_per_day * 2 * np.pi),
                      (slot // clock.slots_per_day >= 5).astype(float) - 2 / 7], axis=1)
    basis /= np.linalg.norm(basis, axis=0)
    times = np.concatenate([np.sort(clock.origin + 2_900 * 7 * DAY + rng.uniform(0, 14 * DAY, k)) for k in sizes])
    level = rng.normal(8.0, 1.0, n)
    weights = rng.normal(0.0, 3.0, (n, 2))
    noise = rng.uniform(0.05, 0.3, n)
    center = 0.3 * np.cos(slot / clock.slots * 2 * np.pi)
    first, second, fraction = clock.between_all(times)
    table = center[None, :] + weights @ basis.T
    y = level[device] + table[device, first] + fraction * (table[device, second] - table[device, first])
    y += noise[device] * rng.standard_t(5, len(device))
    spikes = rng.choice(len(device), 60, replace=False)
    y[spikes] += 8 * noise[device[spikes]]
    y[device == 8] += np.where(np.arange(sizes[8]) > 2_000, 0.7, 0.0)  # a level that changed
    data = TrainingData(device, [f"thing-{i}" for i in range(n)], times, np.expm1(y))
    sampled = np.sort(rng.choice(len(device), len(device) // 15, replace=False)).astype(np.int64)
    start = refit.SampleFit(level + rng.normal(0, 0.05, n), weights + rng.normal(0, 0.1, (n, 2)),
                            noise * rng.uniform(0.9, 1.3, n), noise * rng.uniform(1.2, 1.8, n))
    return data, clock, center, basis, start, sampled


def _reference(data: TrainingData, clock: SeasonalClock, center: np.ndarray, basis: np.ndarray, fallbacks: Fallbacks,
               start: refit.SampleFit, sampled: np.ndarray) -> dict[str, np.ndarray]:
    """refit.refit's four steps one device at a time, in float64, the plain way."""
    n = len(data.devices)
    augmented = np.concatenate((np.ones((clock.slots, 1)), basis), axis=1)
    equations = NormalEquations(augmented)
    mass = math.erf(CLIP / math.sqrt(2))
    correction = math.sqrt(1 - 2 * CLIP * math.exp(-CLIP * CLIP / 2) / math.sqrt(2 * math.pi) / mass)
    out = {k: np.zeros(n) for k in ("location", "spread", "m2", "m4", "count", "beyond", "outside")}
    out["weights"] = np.zeros((n, basis.shape[1]))
    in_sample = np.zeros(len(data), dtype=bool)
    in_sample[sampled] = True
    for i in range(n):
        at = np.flatnonzero(data.device == i)
        location, weights = float(start.location[i]), start.weights[i].astype(np.float64)
        spread = float(start.spread[i])  # the sample's, around level and rhythm
        if not len(at):  # its clipped moments keep their start: the spread around the level alone
            out["location"][i], out["weights"][i], out["spread"][i] = location, weights, start.level_spread[i]
            continue
        y = np.log1p(data.value[at])
        first, second, fraction = clock.between_all(data.time[at])

        def line(table: np.ndarray) -> np.ndarray:
            return table[first] + fraction * (table[second] - table[first])

        residual = y - line(center + location + basis @ weights)
        keep = np.abs(residual) <= RHYTHM_CLIP * spread
        nearest = np.where(fraction >= 0.5, second, first)[keep]
        sums = np.bincount(nearest, weights=residual[keep], minlength=clock.slots)[None, :]
        counts = np.bincount(nearest, minlength=clock.slots).astype(np.float64)[None, :]
        step = equations.solve(*fallbacks.table(sums, counts))[0]
        location += step[0]
        weights = weights + step[1:]
        residual -= line(augmented @ step)
        kept = np.abs(residual) <= CLIP * float(start.level_spread[i])
        if kept.sum() > 1:
            shift = residual[kept].mean()
            std = math.sqrt(max((residual[kept] ** 2).mean() - shift ** 2, 0.0)) / correction
        else:
            shift, std = 0.0, float(start.level_spread[i])
        location += shift
        differences = np.minimum(np.abs(np.diff(y)) / (math.sqrt(2) * max(std, 1e-9)), CAP)
        used = ~(in_sample[at][1:] | in_sample[at][:-1])
        outside = ~in_sample[at]
        out["location"][i], out["weights"][i], out["spread"][i] = location, weights, std
        out["m2"][i], out["m4"][i] = (differences[used] ** 2).sum(), (differences[used] ** 4).sum()
        out["count"][i] = used.sum()
        out["beyond"][i] = (np.abs(residual - shift)[outside] > refit.BEYOND * std).sum()
        out["outside"][i] = outside.sum()
    return out


@pytest.mark.parametrize(("chunk", "block"), [(500, 2_000), (3_000, 9_000), (10_000_000, 10_000_000)])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_pass_matches_a_plain_fit_of_each_device(monkeypatch: pytest.MonkeyPatch, chunk: int, block: int,
                                                     seed: int) -> None:
    data, clock, center, basis, start, sampled = _fleet(seed)
    counts = np.bincount(clock.slots_of(data.time), minlength=clock.slots).astype(np.float64)
    fallbacks = Fallbacks(counts, 20)
    monkeypatch.setattr(tails, "_CHUNK", chunk)
    monkeypatch.setattr(refit, "_BLOCK", block)
    fit = refit.refit(data, clock, center, basis, fallbacks, start, sampled, nonnegative=True,
                      rhythm_clip=RHYTHM_CLIP, cap=CAP, clip=CLIP)
    expected = _reference(data, clock, center, basis, fallbacks, start, sampled)
    # float32 in the pass: a part in 1e5 of a log value of ~8, a part in 1e4 of a spread.
    np.testing.assert_allclose(fit.location, expected["location"], rtol=0, atol=2e-4)
    np.testing.assert_allclose(fit.weights, expected["weights"], rtol=0, atol=2e-4)
    np.testing.assert_allclose(fit.spread, expected["spread"], rtol=2e-4)
    np.testing.assert_allclose(fit.differences.count, expected["count"], rtol=0, atol=0)
    m2, m4, count = expected["m2"], expected["m4"], expected["count"]
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(fit.differences.kurtosis, np.nan_to_num(m4 * count / (m2 * m2)), rtol=5e-4)
        np.testing.assert_allclose(fit.differences.rms, np.nan_to_num(np.sqrt(m2 / count)), rtol=5e-4)
    np.testing.assert_array_equal(fit.outside, expected["outside"])
    np.testing.assert_array_equal(fit.datapoints, np.bincount(data.device, minlength=len(data.devices)))
    # A datapoint within float32's rounding of 4 spreads may count on either side.
    assert np.abs(fit.beyond - expected["beyond"]).max() <= 1
    assert expected["beyond"].sum() >= 40  # the spikes and the level change are counted


@pytest.mark.parametrize("location", [0.0, -0.0, 0.4])
def test_clipped_moments_match_a_plain_computation_from_any_start(location: float) -> None:
    rng = np.random.default_rng(5)
    sizes = np.array([0, 1, 2, 50, 400, 3, 1_000])
    segments = Segments(sizes)
    values = (rng.standard_t(4, sizes.sum()) * 0.2 + 0.3).astype(np.float32)
    spread = rng.uniform(0.1, 0.4, len(sizes))
    got_location, got_std = clipped_location_and_std(segments, values, clip=CLIP, rounds=1,
                                                     start=(np.full(len(sizes), location), spread))
    mass = math.erf(CLIP / math.sqrt(2))
    correction = math.sqrt(1 - 2 * CLIP * math.exp(-CLIP * CLIP / 2) / math.sqrt(2 * math.pi) / mass)
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    for i in range(len(sizes)):
        centered = values[bounds[i]:bounds[i + 1]].astype(np.float64) - location
        kept = centered[np.abs(centered) <= CLIP * spread[i]]
        if len(kept) > 1:
            assert got_location[i] == pytest.approx(location + kept.mean(), abs=1e-6)
            assert got_std[i] == pytest.approx(math.sqrt(max((kept ** 2).mean() - kept.mean() ** 2, 0)) / correction,
                                               rel=1e-5)
        else:
            assert got_location[i] == location and got_std[i] == spread[i]
            assert math.copysign(1.0, got_location[i]) == math.copysign(1.0, location)


def test_along_is_the_line_between_slot_centres() -> None:
    rng = np.random.default_rng(6)
    clock = SeasonalClock()
    table = rng.normal(0, 1, (7, clock.slots)).astype(np.float32)
    times = clock.origin + rng.uniform(0, 60 * DAY, 5_000)
    row = rng.integers(0, 7, len(times))
    first, second, fraction = clock.between_all(times)
    quick_first, quick_fraction = clock.first_of(times)
    expected = table[row, first] + fraction.astype(np.float64) * (table[row, second] - table[row, first])
    cell = (row * clock.slots + quick_first).astype(np.int32)
    for got in (refit.along(table, cell, quick_fraction),
                refit.along(table, cell, quick_fraction, np.roll(table, -1, axis=1) - table)):
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
