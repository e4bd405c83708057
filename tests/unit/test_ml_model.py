"""The ML Detect model (iotdefender.engine.ml): what it learns, how it judges, how it is stored."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iotdefender.engine.ml import BehaviorModel, ConfidenceLevel, SeasonalClock, TrainingData, TrainingSettings, train
from iotdefender.engine.ml.model import from_log, to_log

START = 1_800_000_000.0  # a Friday, 08:00 UTC
DAY = 86_400.0
STEP = 300.0


def fleet(devices: int = 60, days: int = 14, seed: int = 1, *, sigma: float = 0.1,
          amplitude: float = 0.5) -> tuple[TrainingData, np.ndarray]:
    """Devices at their own level (log scale) with a daily rhythm and lognormal noise of ``sigma``."""
    rng = np.random.default_rng(seed)
    times = START + np.arange(int(days * DAY / STEP)) * STEP
    device = np.repeat(np.arange(devices, dtype=np.int32), len(times))
    t = np.tile(times, devices)
    level = rng.normal(8.0, 1.0, devices)
    y = level[device] + amplitude * daily(t) + rng.normal(0.0, sigma, len(t))
    return TrainingData(device, [f"thing-{i}" for i in range(devices)], t, np.expm1(y)), level


def daily(t: np.ndarray | float) -> np.ndarray | float:
    return np.sin((np.asarray(t) % DAY) / DAY * 2 * np.pi)


def expected(level: float, at: float, k: float, sigma: float = 0.1, amplitude: float = 0.5) -> float:
    """The value ``k`` standard deviations (of the device's noise) away from its normal at ``at``."""
    return float(np.expm1(level + amplitude * float(daily(at)) + k * sigma))


@pytest.fixture(scope="module")
def trained() -> tuple[BehaviorModel, np.ndarray, TrainingData]:
    data, level = fleet()
    return train(data, trained_at=START + 14 * DAY, settings=TrainingSettings()), level, data


def test_training_is_deterministic_even_when_sampled() -> None:
    data, _ = fleet(devices=20, days=3)
    settings = TrainingSettings(max_datapoints=5_000, fleet_sample=2_000)
    first = train(data, trained_at=1.0, settings=settings)
    second = train(data, trained_at=1.0, settings=settings)
    assert first.to_bytes() == second.to_bytes()
    assert first.summary().datapoints_used < len(data)


def test_normal_values_are_not_judged(trained: tuple[BehaviorModel, np.ndarray, TrainingData]) -> None:
    model, level, _ = trained
    later = START + 15 * DAY
    for i in range(0, 60, 7):
        for hour in range(0, 24, 3):
            at = later + hour * 3600 + 150
            for k in (-2.0, 0.0, 2.0):
                assert model.judge(f"thing-{i}", expected(level[i], at, k), at) is None


def test_a_spike_of_ten_mads_is_high_and_levels_are_ordered(
        trained: tuple[BehaviorModel, np.ndarray, TrainingData]) -> None:
    model, level, _ = trained
    at = START + 15 * DAY + 7 * 3600 + 150
    assert model.judge("thing-3", expected(level[3], at, 10.0), at) is ConfidenceLevel.HIGH
    assert model.judge("thing-3", expected(level[3], at, -10.0), at) is ConfidenceLevel.HIGH
    thresholds = model.thresholds("thing-3")
    assert thresholds[ConfidenceLevel.LOW] <= thresholds[ConfidenceLevel.MEDIUM] <= thresholds[ConfidenceLevel.HIGH]
    between = (thresholds[ConfidenceLevel.LOW] + thresholds[ConfidenceLevel.MEDIUM]) / 2
    assert model.judge("thing-3", expected(level[3], at, between), at) is ConfidenceLevel.LOW


def test_the_device_level_is_learned_not_the_fleets(trained: tuple[BehaviorModel, np.ndarray, TrainingData]) -> None:
    """A value normal for the fleet but 10 deviations above this device's own level is HIGH for it."""
    model, level, _ = trained
    low_device = int(np.argmin(level))
    at = START + 15 * DAY + 150
    assert model.judge(f"thing-{low_device}", expected(level[low_device], at, 10.0), at) is ConfidenceLevel.HIGH
    # An unknown device is judged against the fleet, whose band spans every device's level.
    assert model.judge("never-seen", expected(level[low_device], at, 10.0), at) is None
    assert model.summary().devices_with_own_band == 60


def test_round_trip_through_bytes(trained: tuple[BehaviorModel, np.ndarray, TrainingData]) -> None:
    model, level, _ = trained
    copy = BehaviorModel.from_bytes(model.to_bytes())
    assert copy.summary() == model.summary()
    assert copy.to_bytes() == model.to_bytes()
    at = START + 16 * DAY + 11 * 3600
    for k in (0.0, 3.5, 4.5, 6.0, 12.0):
        value = expected(level[5], at, k)
        assert copy.judge("thing-5", value, at) == model.judge("thing-5", value, at)
        assert copy.band("thing-5", at, ConfidenceLevel.MEDIUM) == pytest.approx(
            model.band("thing-5", at, ConfidenceLevel.MEDIUM), rel=1e-6)


def test_bytes_of_another_version_or_garbage_are_refused(trained: tuple[BehaviorModel, np.ndarray, TrainingData]) -> None:
    import msgspec

    model, _, _ = trained
    raw = msgspec.msgpack.decode(model.to_bytes())
    raw["version"] = 99
    with pytest.raises(ValueError, match="format 99"):
        BehaviorModel.from_bytes(msgspec.msgpack.encode(raw))
    with pytest.raises(ValueError, match="not a stored ML model"):
        BehaviorModel.from_bytes(b"\x00garbage")


def test_band_is_in_the_metrics_units_and_explained(trained: tuple[BehaviorModel, np.ndarray, TrainingData]) -> None:
    model, level, _ = trained
    at = START + 15 * DAY + 3 * 3600 + 150  # a Saturday, 11:00 UTC
    low, high = model.band("thing-2", at, ConfidenceLevel.HIGH)
    normal = expected(level[2], at, 0.0)
    assert low < normal < high
    threshold = model.thresholds("thing-2")[ConfidenceLevel.HIGH]
    # The band's edges are the threshold's number of the device's deviations (0.1 on the log scale) away.
    assert math.log1p(high) - math.log1p(normal) == pytest.approx(threshold * 0.1, rel=0.15)
    assert model.judge("thing-2", high * 1.01, at) is ConfidenceLevel.HIGH
    assert model.judge("thing-2", high * 0.99, at) is not ConfidenceLevel.HIGH
    low_m, high_m = model.band("thing-2", at, ConfidenceLevel.LOW)
    assert low < low_m < high_m < high
    text = model.explain("thing-2", high * 1.5, at, what="bytes out")
    assert text.startswith(f"bytes out above {high:,.0f} on Saturdays 11:00 is HIGH for thing-2")
    assert "normal" in model.explain("thing-2", normal, at)


def test_thin_hours_fall_back_to_the_hour_of_day_then_the_whole_period() -> None:
    """Two days of data fill 48 of the 168 hour-of-week buckets; a third day reported only at noon."""
    data, _ = fleet(devices=30, days=2, amplitude=2.0)
    model = train(data, trained_at=START + 2 * DAY, settings=TrainingSettings())
    clock = model.clock
    seen = {clock.hour_of_week(float(t)) for t in data.time[::12]}
    assert len(seen) == 48
    unseen = next(h for h in range(168) if h not in seen and (h - 24) % 168 in seen)
    at_unseen = clock.origin + unseen * 3600 + 1800 + 52 * 7 * 86_400
    at_seen = at_unseen - DAY
    other_unseen = next(h for h in range(unseen + 24, 168, 24) if h not in seen)
    # An unseen bucket uses its hour of the day over both days: the same band as every unseen
    # bucket at that hour, close to (not exactly) the band of the seen day at that hour.
    assert model.band("thing-1", at_unseen, ConfidenceLevel.LOW) == model.band(
        "thing-1", at_unseen + (other_unseen - unseen) * 3600, ConfidenceLevel.LOW)
    assert model.band("thing-1", at_unseen, ConfidenceLevel.LOW) == pytest.approx(
        model.band("thing-1", at_seen, ConfidenceLevel.LOW), rel=0.1)
    # With every hour of the day thin, the whole period's median: one band whatever the hour.
    sparse = train(data, trained_at=START + 2 * DAY, settings=TrainingSettings(min_bucket_datapoints=10**9))
    bands = {sparse.band("thing-1", START + h * 3600, ConfidenceLevel.LOW) for h in range(0, 48, 5)}
    assert len(bands) == 1
    # and the daily rhythm (4 deviations each way) is then inside the band, not an anomaly.
    assert len({model.band("thing-1", START + h * 3600, ConfidenceLevel.LOW) for h in range(0, 24, 5)}) > 1


def test_a_new_device_without_history_uses_the_fleet() -> None:
    data, _ = fleet(devices=10, days=3)
    keep = ~((data.device == 0) & (data.time > START + 3600))  # thing-0 reported for one hour only
    model = train(TrainingData(data.device[keep], data.devices, data.time[keep], data.value[keep]),
                  trained_at=START + 3 * DAY, settings=TrainingSettings())
    at = START + 3 * DAY + 100
    assert model.band("thing-0", at, ConfidenceLevel.LOW) == model.band("unknown", at, ConfidenceLevel.LOW)
    assert model.band("thing-1", at, ConfidenceLevel.LOW) != model.band("unknown", at, ConfidenceLevel.LOW)
    assert model.summary().devices_with_own_band == 9


def test_a_constant_metric_still_has_a_band() -> None:
    """Three listening ports for two weeks: four is a change of 22 % on the log scale, five is more."""
    times = START + np.arange(4032) * STEP
    data = TrainingData(np.zeros(4032, dtype=np.int32), ["thing-0"], times, np.full(4032, 3.0))
    model = train(data, trained_at=START + 14 * DAY, settings=TrainingSettings())
    at = START + 14 * DAY
    assert model.judge("thing-0", 3.0, at) is None
    assert model.judge("thing-0", 4.0, at) is ConfidenceLevel.MEDIUM  # (log 5 - log 4) / 0.05 = 4.46
    assert model.judge("thing-0", 10.0, at) is ConfidenceLevel.HIGH
    low, _ = model.band("thing-0", at, ConfidenceLevel.HIGH)
    assert low >= 0


def test_the_clock_scales_and_names_slots() -> None:
    clock = SeasonalClock(hour_seconds=36.0, origin=1000.0)  # --time-scale 100, two slots an hour
    assert clock.slots == 336 and clock.slot_seconds == 18.0
    assert clock.slot(1000.0) == 0
    assert clock.slot(1000.0 + 38 * 36 + 20) == 77 and clock.hour_of_week(1000.0 + 38 * 36 + 20) == 38
    assert clock.slot(1000.0 + 168 * 36) == 0
    assert clock.slots_of(np.array([1000.0 + 38 * 36 + 20, 999.0])).tolist() == [77, 335]
    assert clock.label(77) == "Tuesday 14:30"
    assert clock.label(76, every=True) == "Tuesdays 14:00"
    # A time between two slot centres: a quarter of the way from slot 76's centre to 77's.
    first, second, fraction = clock.between(1000.0 + 76 * 18 + 9 + 4.5)
    assert (first, second) == (76, 77) and fraction == pytest.approx(0.25)
    assert clock.between(1000.0 + 1.0)[:2] == (335, 0)  # the week wraps around
    arrays = clock.between_all(np.array([1000.0 + 76 * 18 + 9 + 4.5, 1001.0]))
    assert arrays[0].tolist() == [76, 335] and arrays[1].tolist() == [77, 0]
    assert SeasonalClock().label(SeasonalClock().slot(START)) == "Friday 08:00"
    with pytest.raises(ValueError):
        SeasonalClock(slots_per_hour=0)


def test_the_log_scale_round_trips_negative_values() -> None:
    for v in (-1000.0, -1.0, 0.0, 0.5, 1e9):
        assert from_log(to_log(v)) == pytest.approx(v)


def test_bad_training_input_is_refused() -> None:
    with pytest.raises(ValueError):
        TrainingData(np.zeros(2, dtype=np.int32), ["a"], np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError):
        TrainingData(np.array([0, 1], dtype=np.int32), ["a"], np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError):
        train(TrainingData(np.zeros(0, dtype=np.int32), [], np.zeros(0), np.zeros(0)), trained_at=0.0,
              settings=TrainingSettings())
    with pytest.raises(ValueError):
        SeasonalClock(hour_seconds=0)


def test_a_device_keeps_its_own_rhythm() -> None:
    """A third of the fleet peaks twelve hours after the rest: judged on its own rhythm, not the fleet's."""
    data, level = fleet(devices=60, days=14, amplitude=1.0)
    shifted = data.device % 3 == 0
    y = np.log1p(data.value)
    y[shifted] += -2.0 * np.asarray(daily(data.time[shifted]))  # +1 sin becomes -1 sin
    model = train(TrainingData(data.device, data.devices, data.time, np.expm1(y)), trained_at=START + 14 * DAY,
                  settings=TrainingSettings())
    for hour in (3, 9, 15, 21):
        at = START + 15 * DAY + hour * 3600 + 150
        for i in (0, 1, 3, 4):
            sign = -1.0 if i % 3 == 0 else 1.0
            normal = float(np.expm1(level[i] + sign * float(daily(at))))
            assert model.judge(f"thing-{i}", normal, at) is None
            assert model.judge(f"thing-{i}", normal * math.exp(10 * 0.1), at) is ConfidenceLevel.HIGH
    without = train(TrainingData(data.device, data.devices, data.time, np.expm1(y)), trained_at=START + 14 * DAY,
                    settings=TrainingSettings(rank=0))
    at = START + 15 * DAY + 6 * 3600  # the fleet's peak, the shifted devices' trough
    spike = float(np.expm1(level[0] - float(daily(at)))) * math.exp(10 * 0.1)
    assert without.judge("thing-0", spike, at) is None  # a fleet rhythm alone misses it


def test_a_spiky_device_gets_wider_thresholds_than_a_smooth_one() -> None:
    """Half the devices have Student-t noise: their cohorts' thresholds are higher, so they do not
    alarm all day, and the smooth half keeps its sensitivity."""
    data, _ = fleet(devices=80, days=14)
    rng = np.random.default_rng(3)
    y = np.log1p(data.value)
    spiky = data.device % 2 == 1
    y[spiky] += 0.1 * rng.standard_t(3, int(spiky.sum()))
    model = train(TrainingData(data.device, data.devices, data.time, np.expm1(y)), trained_at=START + 14 * DAY,
                  settings=TrainingSettings())
    smooth_high = model.thresholds("thing-0")[ConfidenceLevel.HIGH]
    spiky_high = model.thresholds("thing-1")[ConfidenceLevel.HIGH]
    assert spiky_high > smooth_high * 1.3
    assert smooth_high < 7


def test_whole_array_levels_agree_with_judge(trained: tuple[BehaviorModel, np.ndarray, TrainingData]) -> None:
    model, level, _ = trained
    later, _ = fleet(devices=62, days=1, seed=9)  # two devices the model never saw
    rng = np.random.default_rng(4)
    value = later.value * np.exp(rng.choice([0.0, 0.3, 0.45, 0.6, 1.0], len(later)))
    data = TrainingData(later.device, later.devices, later.time + 15 * DAY, value)
    ranks = model.levels(data)
    assert set(ranks.tolist()) == {-1, 0, 1, 2}
    for i in rng.choice(len(data), 3_000, replace=False):
        judged = model.judge(data.devices[data.device[i]], float(data.value[i]), float(data.time[i]))
        assert (-1 if judged is None else judged.rank) == ranks[i]


def test_a_rhythm_that_rises_within_the_hour_is_followed() -> None:
    """A daily job: the level climbs by 1.0 (ten deviations) between 02:00 and 03:00 and falls back
    by 04:00. Normal values along the climb are normal; a spike of ten deviations on it is HIGH."""
    devices, days = 20, 14
    times = START + np.arange(int(days * DAY / STEP)) * STEP
    hour = (times % DAY) / 3600
    job = np.clip(1 - np.abs(hour - 3.0), 0.0, 1.0)  # a tent: 0 at 02:00, 1 at 03:00, 0 at 04:00
    rng = np.random.default_rng(5)
    device = np.repeat(np.arange(devices, dtype=np.int32), len(times))
    y = 8.0 + np.tile(job, devices) + rng.normal(0.0, 0.1, len(device))
    model = train(TrainingData(device, [f"thing-{i}" for i in range(devices)], np.tile(times, devices), np.expm1(y)),
                  trained_at=START + days * DAY, settings=TrainingSettings())
    day = START + days * DAY - START % DAY  # a midnight UTC
    for minute in range(120, 240, 5):
        at = day + minute * 60 + 1
        normal = float(np.expm1(8.0 + max(0.0, 1 - abs(minute / 60 - 3.0))))
        assert model.judge("thing-4", normal, at) is None, minute
        assert model.judge("thing-4", normal * math.exp(10 * 0.1), at) is ConfidenceLevel.HIGH, minute


def test_no_threshold_is_below_the_normal_distributions_quantile() -> None:
    from iotdefender.engine.ml import calibration

    scores = np.random.default_rng(1).normal(size=20_000).astype(np.float32) * 0.5  # too light a tail
    low, medium, high, *below = calibration.thresholds(scores, [1e-3, 1e-4, 2e-6], [0.0, 0.0, 0.0])
    assert below == [low, medium, high]
    assert low == pytest.approx(calibration.normal_quantile(1e-3)) == pytest.approx(3.2905, abs=1e-3)
    assert high == pytest.approx(4.7534, abs=1e-3)
    heavy = (np.random.default_rng(2).standard_t(3, size=200_000)).astype(np.float32)
    assert calibration.thresholds(heavy, [2e-6], [0.0])[0] > 10
