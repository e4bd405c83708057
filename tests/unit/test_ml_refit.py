"""Sampled as at 100k devices, each device's centre and spread still come from all its datapoints."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from iotdefender.engine.ml import TrainingData, TrainingSettings, train
from iotdefender.engine.ml import refit, tails

START = 1_800_000_000.0
DAY = 86_400.0
PER_DEVICE = 4_032  # 14 days of 5-minute reports
SAMPLED = 235  # datapoints a device, as 100k devices x 14 days within 30 s


def fleet(n: int = 400) -> tuple[TrainingData, Callable[[float], np.ndarray], np.ndarray, np.ndarray]:
    """Half the devices with a strong daily rhythm (amplitude 1.2, phases that differ by cohort)
    over a small noise (0.05), half with a weak one over a larger noise; normal noise throughout.
    With it each device's noiseless log value at a time, its noise and which are strong."""
    rng = np.random.default_rng(9)
    t = START + np.arange(PER_DEVICE) * 300.0
    strong = np.arange(n) % 2 == 0
    sigma = np.where(strong, 0.05, rng.uniform(0.1, 0.4, n))
    amplitude = np.where(strong, 1.2, 0.2)
    phase = (np.arange(n) % 8) * np.pi / 4
    level = rng.normal(10.0, 0.8, n)

    def normal(at: float | np.ndarray) -> np.ndarray:
        times = np.atleast_1d(np.asarray(at, dtype=np.float64))
        return level[:, None] + amplitude[:, None] * np.sin(times[None, :] / DAY * 2 * np.pi + phase[:, None])

    y = normal(t) + sigma[:, None] * rng.standard_normal((n, PER_DEVICE))
    data = TrainingData(np.repeat(np.arange(n, dtype=np.int32), PER_DEVICE), [f"thing-{i}" for i in range(n)],
                        np.tile(t, n), np.expm1(y).ravel())
    return data, normal, sigma, strong


def spike_scores(data: TrainingData, normal: Callable[[float], np.ndarray], sigma: np.ndarray,
                 max_datapoints: int) -> np.ndarray:
    """Per device, the median score of a 5-sigma spike over the day after the window (every half hour)."""
    model = train(data, trained_at=float(data.time.max()), settings=TrainingSettings(max_datapoints=max_datapoints))
    times = float(data.time.max()) + 900.0 + np.arange(48) * 1800.0
    spikes = np.expm1(normal(times) + 5 * sigma[:, None])
    return np.array([np.median([model.score(name, float(v), float(at)) for v, at in zip(row, times)])
                     for name, row in zip(data.devices, spikes)])


def test_a_sampled_device_with_a_strong_rhythm_scores_a_5_sigma_spike_near_5() -> None:
    data, normal, sigma, strong = fleet()
    scores = spike_scores(data, normal, sigma, len(sigma) * SAMPLED)
    # Fitted on ~235 datapoints a device (before): the strong-rhythm devices' spread reached 1.2-1.4
    # times their noise and every spread was widened by 7.5 % for the fit's in-sample bias.
    assert np.quantile(scores[strong], 0.05) > 4.6
    assert np.median(scores) > 4.85


def test_without_grouped_datapoints_training_keeps_the_sample_fit() -> None:
    data, normal, sigma, _ = fleet(120)
    shuffled = np.random.default_rng(1).permutation(len(data))
    mixed = TrainingData(data.device[shuffled], data.devices, data.time[shuffled], data.value[shuffled])
    assert not tails.grouped(mixed.device)
    scores = spike_scores(mixed, normal, sigma, len(sigma) * SAMPLED)
    assert np.median(scores) < 4.75  # the sample's fit, widened for its in-sample bias, as before


@pytest.mark.parametrize(("chunk", "block"), [(700, 5_000), (5_000, 30_000), (10_000_000, 10_000_000)])
def test_the_full_fit_does_not_depend_on_how_the_devices_are_chunked(monkeypatch: pytest.MonkeyPatch,
                                                                     chunk: int, block: int) -> None:
    data, normal, sigma, _ = fleet(60)
    base = spike_scores(data, normal, sigma, len(sigma) * SAMPLED)
    monkeypatch.setattr(tails, "_CHUNK", chunk)
    monkeypatch.setattr(refit, "_BLOCK", block)
    assert spike_scores(data, normal, sigma, len(sigma) * SAMPLED) == pytest.approx(base, rel=1e-4)


def test_first_of_is_between_all_quicker() -> None:
    from iotdefender.engine.ml import SeasonalClock

    rng = np.random.default_rng(3)
    for clock in (SeasonalClock(), SeasonalClock(hour_seconds=36.0, slots_per_hour=4)):
        for times in (START + rng.uniform(0, 30 * DAY, 10_000), rng.uniform(-1e10, 1e10, 10_000), np.zeros(0)):
            first, second, fraction = clock.between_all(times)
            quick, quick_fraction = clock.first_of(times)
            assert quick.dtype == np.int32 and quick_fraction.dtype == np.float32
            near_edge = (fraction < 1e-4) | (fraction > 1 - 1e-4)
            assert np.array_equal(quick[~near_edge], first[~near_edge])
            assert np.all(np.isin(quick[near_edge] - first[near_edge], [-1, 0, 1, clock.slots - 1, 1 - clock.slots]))
            assert np.allclose(quick_fraction[~near_edge], fraction[~near_edge], atol=1e-4)


def test_a_negative_value_outside_the_sample_does_not_break_its_device() -> None:
    data, normal, sigma, _ = fleet(40)
    values = data.value.copy()
    values[5 * PER_DEVICE + 1_001] = -50_000.0  # a signed custom metric, negative once, between sampled datapoints
    signed = TrainingData(data.device, data.devices, data.time, values)
    model = train(signed, trained_at=float(data.time.max()), settings=TrainingSettings(max_datapoints=40 * 100))
    assert model.summary().datapoints_used < len(data) / 10
    at = float(data.time.max()) + 900.0
    value = float(np.expm1(normal(at)[5, 0]))
    assert np.isfinite(model.score("thing-5", value, at))
    assert model.judge("thing-5", value, at) is None


def test_a_prior_holds_the_rhythm_the_datapoints_do_not_show() -> None:
    """A device fitted again from weekdays alone (its days before a level change, shifts.py): on
    weekdays the level and a weekday rhythm are the same thing, so with the small ridge alone the
    correction of its level splits between them and its weekend, which no datapoint shows, moves
    with it; with its rhythm cohort's prior (seasonal.nearest_cohort_prior) the weekend is the cohort's."""
    from iotdefender.engine.ml.clock import SeasonalClock
    from iotdefender.engine.ml.seasonal import Fallbacks

    clock = SeasonalClock()
    weekend = (np.arange(clock.slots) // clock.slots_per_day) >= 5
    basis = np.stack([(~weekend).astype(float), weekend.astype(float)], axis=1)  # weekdays, weekend
    level, quiet = 5.0, -0.6  # its level, and its weekends that much lower
    t = clock.origin + 3_000 * 7 * DAY + np.arange(5 * 288) * 300.0  # Monday to Friday
    y = level + 0.05 * np.random.default_rng(2).standard_normal(len(t))
    data = TrainingData(np.zeros(len(t), dtype=np.int32), ["thing-0"], t, np.expm1(y))
    # Its first fit covered both levels: half a unit high, its weekend bent up by as much.
    start = refit.SampleFit(np.array([level + 0.5]), np.array([[0.0, quiet + 0.5]]), np.array([0.2]), np.array([0.5]))

    def weekend_error(prior: tuple[np.ndarray, np.ndarray] | None) -> float:
        fit = refit.refit(data, clock, np.zeros(clock.slots), basis, Fallbacks(np.full(clock.slots, 1e3), 20),
                          start, np.zeros(0, dtype=np.int64), nonnegative=True, rhythm_clip=4.0, cap=5.0,
                          prior=prior)
        assert abs(float(fit.location[0] + fit.weights[0, 0]) - level) < 0.01  # its weekdays, either way
        return abs(float(fit.location[0] + fit.weights[0, 1]) - (level + quiet))

    assert weekend_error(None) > 0.4
    assert weekend_error((np.array([[0.0, quiet]]), np.array([[100.0, 100.0]]))) < 0.05


def test_a_changed_device_takes_the_rhythm_of_the_unchanged_devices_nearest_it() -> None:
    """seasonal.nearest_cohort_prior: the cohorts come from the eligible (unchanged) devices only,
    and each member takes the one nearest its own weights; too few eligible devices, no pull."""
    from iotdefender.engine.ml.seasonal import RIDGE, nearest_cohort_prior

    rng = np.random.default_rng(4)
    n = 400
    kind = np.arange(n) % 2
    weights = np.stack([np.where(kind == 0, 1.0, -1.0), np.where(kind == 0, 0.0, 0.5)], axis=1)
    weights += 0.01 * rng.standard_normal((n, 2))
    members = np.array([0, 1, 2, 3])
    weights[members] += np.array([[0.3, 0.2]])  # bent by a change: their own fits are off
    spread, datapoints = np.full(n, 0.1), np.full(n, 4_000.0)
    eligible = np.ones(n, dtype=bool)
    eligible[members] = False
    mean, ridge = nearest_cohort_prior(weights, spread, datapoints, eligible, members, slots=336)
    expected = np.where((kind[members] == 0)[:, None], [1.0, 0.0], [-1.0, 0.5])
    # The cohort nearest (32 of them split the two kinds: the nearest is on the side it bent to).
    assert np.allclose(mean, expected, atol=0.05)
    assert (np.abs(mean - weights[members]).max(axis=1) > 0.25).all()
    assert (ridge >= RIDGE).all()
    few = np.zeros(n, dtype=bool)
    few[:10] = True
    mean, ridge = nearest_cohort_prior(weights, spread, datapoints, few, members, slots=336)
    assert (mean == 0).all() and (ridge == RIDGE).all()


def test_the_pass_counts_each_devices_datapoints_far_off_its_fit_outside_the_sample() -> None:
    """FullFit.beyond / outside (calibration.crowding_by_counts): a device with 40 datapoints 10
    spreads up (a bump on some nights) has them counted, less those the sample holds; one with
    normal noise next to none."""
    from iotdefender.engine.ml.clock import SeasonalClock
    from iotdefender.engine.ml.seasonal import Fallbacks

    clock = SeasonalClock()
    per = 2_000
    t = clock.origin + 3_000 * 7 * DAY + np.arange(per) * 300.0
    rng = np.random.default_rng(4)
    y = 5.0 + 0.05 * rng.standard_normal((2, per))
    bumped = np.sort(rng.choice(per, 40, replace=False))
    y[1, bumped] += 0.5
    data = TrainingData(np.repeat(np.arange(2, dtype=np.int32), per), ["thing-0", "thing-1"], np.tile(t, 2),
                        np.expm1(y).ravel())
    sampled = np.sort(np.concatenate((np.arange(0, 2 * per, 20), per + bumped[:10])))
    sampled = np.unique(sampled)
    start = refit.SampleFit(np.array([5.0, 5.0]), np.zeros((2, 0)), np.array([0.05, 0.05]), np.array([0.05, 0.05]))
    fit = refit.refit(data, clock, np.zeros(clock.slots), np.zeros((clock.slots, 0)),
                      Fallbacks(np.full(clock.slots, 1e3), 20), start, sampled, nonnegative=True,
                      rhythm_clip=4.0, cap=5.0)
    in_sample = np.bincount(np.searchsorted([per], sampled, side="right"), minlength=2)
    assert fit.outside.tolist() == (per - in_sample).tolist()
    assert fit.beyond[0] <= 2  # normal noise: ~0.1 expected
    assert fit.beyond[1] == 40 - len(np.intersect1d(sampled - per, bumped))
