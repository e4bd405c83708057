"""A trained ML Detect model: one behavior's normal band per device and hour of the week.

The model is a robust seasonal baseline on the log scale (``training.train`` builds it):

    y = sign(v) * log(1 + |v|)          the value, log-scaled (a spread is relative to the level)
    center = fleet[hour] + offset[device]   the fleet's median in that hour of the week, moved to
                                        the device's own level
    scale = spread[device] * shape[hour]    the device's robust spread, widened or narrowed by the
                                        fleet's spread in that hour (nights are quieter)
    score = |y - center| / scale        how many robust standard deviations the value is away

A device without enough history is judged against the fleet instead: center = fleet[hour],
scale = the fleet's spread in that hour (which includes how far devices differ from each other).
A score above a level's threshold (a high quantile of the training scores) is that level.

Everything the ingest path needs is precomputed into plain Python floats, so ``judge`` is a
dictionary look-up and a few float operations (about 1 µs, bench/ml_detect.py).

Memory per (behavior, device) with its own band: in the stored form 8 bytes (two float32) plus
the device name; loaded, one dictionary entry holding a tuple of two floats, about 190 bytes
with a ~20-character name (measured by the benchmark's ``memory`` figure). Devices judged
against the fleet cost nothing. Per behavior, fixed: 3 x 168 floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from iotdefender.engine.ml.clock import HOURS_PER_WEEK, SeasonalClock
from iotdefender.engine.ml.levels import LEVELS, ConfidenceLevel

FORMAT_VERSION = 1


class ModelSummary(msgspec.Struct, frozen=True):
    """What a model was trained on, for training summaries and the console."""

    datapoints: int  # datapoints in the training window
    datapoints_used: int  # of which the statistics were computed on (a seeded uniform sample)
    devices: int
    devices_with_own_band: int  # the rest are judged against the fleet
    window_start: float  # first and last datapoint of the training window, epoch seconds
    window_end: float
    trained_at: float
    thresholds: dict[str, float]  # per level, in robust standard deviations


class _Stored(msgspec.Struct, frozen=True):
    """The durable form: versioned, columns as little-endian float32 bytes."""

    version: int
    hour_seconds: float
    origin: float
    nonnegative: bool
    center: list[float]  # per hour of the week, log scale
    fleet_scale: list[float]
    shape: list[float]
    thresholds: list[float]  # LOW, MEDIUM, HIGH
    devices: list[str]  # devices with their own band
    offset: bytes
    scale: bytes
    summary: ModelSummary


def to_log(value: float) -> float:
    """The model's scale: log(1 + v), mirrored for negative custom-metric values."""
    return math.log1p(value) if value >= 0 else -math.log1p(-value)


def from_log(y: float) -> float:
    return math.expm1(y) if y >= 0 else -math.expm1(-y)


def to_log_array(values: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    v = np.asarray(values, dtype=np.float64)
    result: npt.NDArray[np.float64] = np.copysign(np.log1p(np.abs(v)), v)
    return result


@dataclass(frozen=True)
class DeviceBands:
    """The arrays a model is made of (what ``train`` computes)."""

    center: npt.NDArray[np.float64]  # [168] fleet median per hour of the week, log scale
    fleet_scale: npt.NDArray[np.float64]  # [168] fleet robust std per hour of the week
    shape: npt.NDArray[np.float64]  # [168] per-hour multiplier of a device's own spread
    thresholds: tuple[float, float, float]  # LOW, MEDIUM, HIGH
    devices: list[str]  # devices with their own band
    offset: npt.NDArray[np.float32]  # per such device, log scale, added to center
    scale: npt.NDArray[np.float32]  # per such device, robust std, log scale
    nonnegative: bool  # every training value was >= 0: a band never goes below 0


class BehaviorModel:
    """Immutable: build it with ``training.train`` or ``from_bytes``."""

    __slots__ = ("_clock", "_center", "_fleet_scale", "_shape", "_thresholds", "_own", "_nonnegative",
                 "_bands", "_summary")

    def __init__(self, clock: SeasonalClock, bands: DeviceBands, summary: ModelSummary) -> None:
        if not (len(bands.center) == len(bands.fleet_scale) == len(bands.shape) == HOURS_PER_WEEK):
            raise ValueError("a model has one value per hour of the week")
        if len(bands.devices) != len(bands.offset) or len(bands.devices) != len(bands.scale):
            raise ValueError("offset and scale need one value per device")
        self._clock = clock
        self._bands = bands
        self._summary = summary
        self._center: list[float] = [float(x) for x in bands.center]
        self._fleet_scale: list[float] = [float(x) for x in bands.fleet_scale]
        self._shape: list[float] = [float(x) for x in bands.shape]
        self._thresholds = bands.thresholds
        self._nonnegative = bands.nonnegative
        self._own: dict[str, tuple[float, float]] = dict(
            zip(bands.devices, zip(bands.offset.tolist(), bands.scale.tolist())))

    # -- the ingest path ---------------------------------------------------------------------

    def score(self, device: str, value: float, at: float) -> float:
        """How many robust standard deviations ``value`` is from the device's normal at ``at``."""
        center, scale = self._center_and_scale(device, at)
        y = math.log1p(value) if value >= 0 else -math.log1p(-value)
        return abs(y - center) / scale

    def judge(self, device: str, value: float, at: float) -> ConfidenceLevel | None:
        """The most confident level whose band ``value`` leaves; None when it is normal."""
        clock = self._clock
        hour = int((at - clock.origin) // clock.hour_seconds) % HOURS_PER_WEEK
        own = self._own.get(device)
        if own is None:
            center = self._center[hour]
            scale = self._fleet_scale[hour]
        else:
            center = self._center[hour] + own[0]
            scale = own[1] * self._shape[hour]
        y = math.log1p(value) if value >= 0 else -math.log1p(-value)
        z = abs(y - center) / scale
        low, medium, high = self._thresholds
        if z <= low:
            return None
        if z <= medium:
            return ConfidenceLevel.LOW
        if z <= high:
            return ConfidenceLevel.MEDIUM
        return ConfidenceLevel.HIGH

    # -- reading the model -------------------------------------------------------------------

    def band(self, device: str, at: float, level: ConfidenceLevel) -> tuple[float, float]:
        """The normal range at ``level`` in the metric's own units: values inside are not judged ``level``."""
        center, scale = self._center_and_scale(device, at)
        width = self._thresholds[level.rank] * scale
        low, high = from_log(center - width), from_log(center + width)
        if self._nonnegative:
            low = max(0.0, low)
        return (low, high)

    def explain(self, device: str, value: float, at: float, *, what: str = "the value") -> str:
        """One sentence in the metric's units, e.g. for an event's evidence or the console.

        ``what`` names the metric ("messages sent per 5 min"), which the model does not know.
        """
        hour = self._clock.hour_of_week(at)
        when = SeasonalClock.label(hour, every=True)
        basis = "its own history" if device in self._own else "the fleet"
        level = self.judge(device, value, at)
        if level is None:
            low, high = self.band(device, at, ConfidenceLevel.LOW)
            return (f"{what} {_number(value)} is normal for {device} on {when} "
                    f"(between {_number(low)} and {_number(high)}, learned from {basis})")
        low, high = self.band(device, at, level)
        side = f"above {_number(high)}" if to_log(value) > to_log(high) else f"below {_number(low)}"
        return (f"{what} {side} on {when} is {level.value} for {device} "
                f"(measured {_number(value)}, {self.score(device, value, at):.1f} robust standard deviations "
                f"from normal, learned from {basis})")

    def summary(self) -> ModelSummary:
        return self._summary

    @property
    def clock(self) -> SeasonalClock:
        return self._clock

    @property
    def thresholds(self) -> dict[ConfidenceLevel, float]:
        """Per level, the score (robust standard deviations) above which a datapoint is that level."""
        return dict(zip(LEVELS, self._thresholds))

    # -- storage -----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        b = self._bands
        stored = _Stored(
            version=FORMAT_VERSION, hour_seconds=self._clock.hour_seconds, origin=self._clock.origin,
            nonnegative=b.nonnegative, center=self._center, fleet_scale=self._fleet_scale, shape=self._shape,
            thresholds=list(b.thresholds), devices=b.devices,
            offset=b.offset.astype("<f4").tobytes(), scale=b.scale.astype("<f4").tobytes(), summary=self._summary)
        return msgspec.msgpack.encode(stored)

    @classmethod
    def from_bytes(cls, data: bytes) -> BehaviorModel:
        """Raises ``ValueError`` on bytes of another format version or not a model at all."""
        try:
            stored = msgspec.msgpack.decode(data, type=_Stored)
        except msgspec.DecodeError as error:
            raise ValueError(f"not a stored ML model: {error}") from error
        if stored.version != FORMAT_VERSION:
            raise ValueError(f"stored ML model format {stored.version}, this version reads {FORMAT_VERSION}")
        low, medium, high = stored.thresholds
        bands = DeviceBands(
            center=np.array(stored.center), fleet_scale=np.array(stored.fleet_scale), shape=np.array(stored.shape),
            thresholds=(low, medium, high), devices=stored.devices,
            offset=np.frombuffer(stored.offset, dtype="<f4").astype(np.float32),
            scale=np.frombuffer(stored.scale, dtype="<f4").astype(np.float32), nonnegative=stored.nonnegative)
        return cls(SeasonalClock(stored.hour_seconds, stored.origin), bands, stored.summary)

    def _center_and_scale(self, device: str, at: float) -> tuple[float, float]:
        hour = self._clock.hour_of_week(at)
        own = self._own.get(device)
        if own is None:
            return self._center[hour], self._fleet_scale[hour]
        return self._center[hour] + own[0], own[1] * self._shape[hour]


def _number(x: float) -> str:
    """Readable in the metric's units: 640, 12.5, 0.031."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"
