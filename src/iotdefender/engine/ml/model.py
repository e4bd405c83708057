"""A trained ML Detect model: one behavior's normal band per device and slot of the week.

The model is a robust seasonal baseline on the log scale (``training.train`` builds it):

    y = sign(v) * log(1 + |v|)           the value, log-scaled (a spread is relative to the level)
    center = fleet[t] + offset[device] + weights[device] @ basis[t]
                                         the fleet's median at that time of the week, moved to the
                                         device's level and bent to its own rhythm (seasonal.py);
                                         [t]: a line between the two nearest slot centres (clock.py)
    scale = spread[device] * shape[slot]  the device's robust spread, widened or narrowed by the
                                         fleet's in that slot (nights are quieter)
    score = |y - center| / scale         how many robust standard deviations the value is away

A score above a level's threshold is that level; thresholds are per cohort of devices with alike
tails, and per side of the centre (above, below: calibration.sides). A device without enough history is judged against the fleet instead:
center = fleet[t], scale = the fleet's spread in that slot (which includes how far devices
differ from each other), thresholds of cohort 0.

Everything the ingest path needs is precomputed: ``judge`` is a dictionary look-up, a few float
operations and two dot products of ``rank`` weights (2.3-3.5 µs of CPU, bench/ml_detect.py).

Memory per (behavior, device) with its own band, for the default rank 16: 73 bytes of numbers
(offset, spread, 16 weights as float32, a cohort byte) plus its name. Measured by
bench/ml_detect.py on a 100k-device model with 12-character names: 86 bytes stored
(``to_bytes``), 284 bytes loaded (the numbers packed behind memoryviews, the name as a
dictionary key with its index). Devices judged against the fleet cost nothing. Per behavior,
fixed: (3 + rank) x 336 numbers and 6 thresholds per tail cohort (3 levels, 2 sides).
"""

from __future__ import annotations

import math
from operator import mul
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from iotdefender.english import number as _number
from iotdefender.engine.ml.clock import SeasonalClock
from iotdefender.engine.ml.data import TrainingData
from iotdefender.engine.ml.levels import LEVELS, ConfidenceLevel

#: 2: thresholds per side of the centre (six per cohort). A model stored in format 1 (one threshold
#: per level for both sides) is read with the same thresholds on both sides, as it judged.
FORMAT_VERSION = 2
_READS = (1, 2)


class ModelSummary(msgspec.Struct, frozen=True):
    """What a model was trained on, for training summaries and the console."""

    datapoints: int  # datapoints in the training window
    datapoints_used: int  # of which the statistics were computed on (a seeded uniform sample)
    devices: int
    devices_with_own_band: int  # the rest are judged against the fleet
    window_start: float  # first and last datapoint of the training window, epoch seconds
    window_end: float
    trained_at: float
    thresholds: dict[str, float]  # per level, in robust standard deviations (the median over tail cohorts), above
    thresholds_below: dict[str, float] = {}  # the same below the centre (empty for a model of format 1)


class _Stored(msgspec.Struct, frozen=True):
    """The durable form: versioned, columns as little-endian float32 bytes."""

    version: int
    hour_seconds: float
    origin: float
    slots_per_hour: int
    nonnegative: bool
    center: list[float]  # per slot of the week, log scale
    fleet_scale: list[float]
    shape: list[float]
    rank: int
    basis: bytes  # [slots, rank]
    cohort_thresholds: list[list[float]]  # per cohort: LOW, MEDIUM, HIGH above, then below (format 1: one side)
    devices: list[str]  # devices with their own band
    offset: bytes
    scale: bytes
    weights: bytes  # [devices, rank]
    cohort: bytes  # one byte per device
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

    center: npt.NDArray[np.float64]  # [slots] fleet median per slot of the week (at its centre), log scale
    fleet_scale: npt.NDArray[np.float64]  # [slots] fleet robust std per slot of the week
    shape: npt.NDArray[np.float64]  # [slots] per-slot multiplier of a device's own spread
    basis: npt.NDArray[np.float32]  # [slots, rank] the fleet's main rhythms
    cohort_thresholds: npt.NDArray[np.float64]  # [cohorts + 1, 6] LOW, MEDIUM, HIGH above, then below; row 0: the fleet's
    devices: list[str]  # devices with their own band
    offset: npt.NDArray[np.float32]  # per such device, log scale, added to center
    scale: npt.NDArray[np.float32]  # per such device, robust std, log scale
    weights: npt.NDArray[np.float32]  # [devices, rank] its share of each rhythm
    cohort: npt.NDArray[np.uint8]  # per such device, its row of cohort_thresholds
    nonnegative: bool  # every training value was >= 0: a band never goes below 0


class BehaviorModel:
    """Immutable: build it with ``training.train`` or ``from_bytes``."""

    __slots__ = ("_clock", "_bands", "_summary", "_center", "_fleet_scale", "_shape", "_basis", "_rank",
                 "_slots", "_origin", "_slot_seconds",
                 "_above", "_below", "_index", "_offset", "_scale", "_weights", "_cohort")

    def __init__(self, clock: SeasonalClock, bands: DeviceBands, summary: ModelSummary) -> None:
        n, rank = len(bands.devices), bands.basis.shape[1] if bands.basis.ndim == 2 else -1
        if not (len(bands.center) == len(bands.fleet_scale) == len(bands.shape) == len(bands.basis)
                == clock.slots) or rank < 0:
            raise ValueError("a model has one value per slot of the week")
        if not (len(bands.offset) == len(bands.scale) == len(bands.cohort) == n) or bands.weights.shape != (n, rank):
            raise ValueError("offset, scale, weights and cohort need one entry per device")
        if bands.cohort_thresholds.ndim != 2 or bands.cohort_thresholds.shape[1] != 2 * len(LEVELS) or \
                (n and int(bands.cohort.max()) >= len(bands.cohort_thresholds)):
            raise ValueError("thresholds need three levels on each side for every cohort")
        self._clock = clock
        self._bands = bands
        self._summary = summary
        self._center: list[float] = bands.center.tolist()
        self._fleet_scale: list[float] = bands.fleet_scale.tolist()
        self._shape: list[float] = bands.shape.tolist()
        self._basis: list[tuple[float, ...]] = [tuple(row) for row in bands.basis.astype(np.float64).tolist()]
        self._slots = clock.slots
        self._origin = clock.origin
        self._slot_seconds = clock.slot_seconds
        self._rank = rank
        rows = bands.cohort_thresholds.tolist()
        self._above: list[tuple[float, float, float]] = [(row[0], row[1], row[2]) for row in rows]
        self._below: list[tuple[float, float, float]] = [(row[3], row[4], row[5]) for row in rows]
        self._index: dict[str, int] = {name: i for i, name in enumerate(bands.devices)}
        # Packed float32 behind memoryviews: 4 bytes a number, read back as Python floats.
        self._offset = memoryview(bands.offset.astype("=f4").tobytes()).cast("f")
        self._scale = memoryview(bands.scale.astype("=f4").tobytes()).cast("f")
        self._weights = memoryview(bands.weights.astype("=f4").tobytes()).cast("f")
        self._cohort = bands.cohort.astype(np.uint8).tobytes()

    # -- the ingest path ---------------------------------------------------------------------

    def judge(self, device: str, value: float, at: float) -> ConfidenceLevel | None:
        """The most confident level whose band ``value`` leaves; None when it is normal."""
        # clock.between, inlined: the slot centres before and after ``at``, and how far between them.
        position = (at - self._origin) / self._slot_seconds - 0.5
        floor = math.floor(position)
        fraction = position - floor
        first = floor % self._slots
        second = first + 1 if first + 1 < self._slots else 0
        nearest = first if fraction < 0.5 else second
        c0 = self._center[first]
        center = c0 + fraction * (self._center[second] - c0)
        i = self._index.get(device)
        if i is None:
            scale = self._fleet_scale[nearest]
            cohort = 0
        else:
            k = self._rank
            weights = self._weights[i * k:i * k + k]
            r0 = sum(map(mul, weights, self._basis[first]))
            center += self._offset[i] + r0 + fraction * (sum(map(mul, weights, self._basis[second])) - r0)
            scale = self._scale[i] * self._shape[nearest]
            cohort = self._cohort[i]
        y = math.log1p(value) if value >= 0 else -math.log1p(-value)
        if y >= center:
            low, medium, high = self._above[cohort]
            z = (y - center) / scale
        else:
            low, medium, high = self._below[cohort]
            z = (center - y) / scale
        if z <= low:
            return None
        if z <= medium:
            return ConfidenceLevel.LOW
        if z <= high:
            return ConfidenceLevel.MEDIUM
        return ConfidenceLevel.HIGH

    def score(self, device: str, value: float, at: float) -> float:
        """How many robust standard deviations ``value`` is from the device's normal at ``at``."""
        center, scale = self._center_and_scale(device, at)
        return abs(to_log(value) - center) / scale

    # -- whole arrays (backtests, the benchmark) ---------------------------------------------

    def levels(self, data: TrainingData) -> npt.NDArray[np.int8]:
        """``judge`` of every datapoint of ``data`` at once, as ranks: -1 normal, 0 LOW, 1 MEDIUM, 2 HIGH."""
        b = self._bands
        codes = np.array([self._index.get(name, -1) for name in data.devices], dtype=np.int64)
        row = codes[data.device]
        own = row >= 0
        row = np.maximum(row, 0)
        first, second, fraction32 = self._clock.between_all(np.asarray(data.time, dtype=np.float64))
        fraction = fraction32.astype(np.float64)
        nearest = np.where(fraction < 0.5, first, second)
        center = b.center[first] + fraction * (b.center[second] - b.center[first])
        if len(b.devices):
            offset = np.where(own, b.offset[row].astype(np.float64), 0.0)
            if self._rank:
                weights = b.weights[row].astype(np.float64)
                r0 = np.einsum("ij,ij->i", weights, b.basis[first].astype(np.float64))
                r1 = np.einsum("ij,ij->i", weights, b.basis[second].astype(np.float64))
                offset += np.where(own, r0 + fraction * (r1 - r0), 0.0)
            scale = np.where(own, b.scale[row].astype(np.float64) * b.shape[nearest], b.fleet_scale[nearest])
            cohort = np.where(own, b.cohort[row], 0)
        else:
            offset, scale = np.zeros(len(first)), b.fleet_scale[nearest]
            cohort = np.zeros(len(first), dtype=np.int64)
        distance = to_log_array(data.value) - (center + offset)
        z = np.abs(distance) / scale
        side = np.where(distance < 0, len(LEVELS), 0)  # the column of LOW on the value's side
        limits = b.cohort_thresholds[cohort]
        rows = np.arange(len(z))
        ranks: npt.NDArray[np.int8] = ((z > limits[rows, side]).astype(np.int8) + (z > limits[rows, side + 1])
                                       + (z > limits[rows, side + 2]) - 1).astype(np.int8)
        return ranks

    # -- reading the model -------------------------------------------------------------------

    def band(self, device: str, at: float, level: ConfidenceLevel) -> tuple[float, float]:
        """The normal range at ``level`` in the metric's own units: values inside are not judged ``level``."""
        center, scale = self._center_and_scale(device, at)
        low = from_log(center - self.thresholds(device, below=True)[level] * scale)
        high = from_log(center + self.thresholds(device)[level] * scale)
        if self._bands.nonnegative:
            low = max(0.0, low)
        return (low, high)

    def explain(self, device: str, value: float, at: float, *, what: str = "the value") -> str:
        """One sentence in the metric's units, e.g. for an event's evidence or the console.

        ``what`` names the metric ("messages sent per 5 min"), which the model does not know.
        """
        when = self._clock.label(self._clock.slot(at), every=True)
        basis = "its own history" if device in self._index else "the fleet"
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

    def thresholds(self, device: str, *, below: bool = False) -> dict[ConfidenceLevel, float]:
        """Per level, the score (robust standard deviations) above which ``device``'s datapoint is
        that level: one above its normal (``below``: one below it)."""
        i = self._index.get(device)
        cohort = 0 if i is None else self._cohort[i]
        return dict(zip(LEVELS, (self._below if below else self._above)[cohort]))

    def summary(self) -> ModelSummary:
        return self._summary

    @property
    def clock(self) -> SeasonalClock:
        return self._clock

    # -- storage -----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        b = self._bands
        stored = _Stored(
            version=FORMAT_VERSION, hour_seconds=self._clock.hour_seconds, origin=self._clock.origin,
            nonnegative=b.nonnegative, center=self._center, fleet_scale=self._fleet_scale, shape=self._shape,
            slots_per_hour=self._clock.slots_per_hour, rank=self._rank, basis=b.basis.astype("<f4").tobytes(),
            cohort_thresholds=b.cohort_thresholds.tolist(), devices=b.devices,
            offset=b.offset.astype("<f4").tobytes(), scale=b.scale.astype("<f4").tobytes(),
            weights=b.weights.astype("<f4").tobytes(), cohort=b.cohort.astype(np.uint8).tobytes(),
            summary=self._summary)
        return msgspec.msgpack.encode(stored)

    @classmethod
    def from_bytes(cls, data: bytes) -> BehaviorModel:
        """Raises ``ValueError`` on bytes of another format version or not a model at all."""
        try:
            stored = msgspec.msgpack.decode(data, type=_Stored)
        except msgspec.DecodeError as error:
            raise ValueError(f"not a stored ML model: {error}") from error
        if stored.version not in _READS:
            raise ValueError(f"stored ML model format {stored.version}, this version reads {_READS}")
        n = len(stored.devices)
        try:
            clock = SeasonalClock(stored.hour_seconds, stored.origin, stored.slots_per_hour)
        except ValueError as error:
            raise ValueError(f"not a stored ML model: {error}") from error

        def floats(raw: bytes, count: int) -> npt.NDArray[np.float32]:
            if len(raw) != 4 * count:
                raise ValueError("not a stored ML model: a column has the wrong length")
            return np.frombuffer(raw, dtype="<f4").astype(np.float32)

        bands = DeviceBands(
            center=np.array(stored.center), fleet_scale=np.array(stored.fleet_scale), shape=np.array(stored.shape),
            basis=floats(stored.basis, clock.slots * stored.rank).reshape(clock.slots, stored.rank),
            cohort_thresholds=_both_sides(stored),
            devices=stored.devices, offset=floats(stored.offset, n), scale=floats(stored.scale, n),
            weights=floats(stored.weights, n * stored.rank).reshape(n, stored.rank),
            cohort=np.frombuffer(stored.cohort, dtype=np.uint8).copy(), nonnegative=stored.nonnegative)
        return cls(clock, bands, stored.summary)

    def _center_and_scale(self, device: str, at: float) -> tuple[float, float]:
        first, second, fraction = self._clock.between(at)
        nearest = first if fraction < 0.5 else second
        center = self._center[first] + fraction * (self._center[second] - self._center[first])
        i = self._index.get(device)
        if i is None:
            return center, self._fleet_scale[nearest]
        k = self._rank
        weights = self._weights[i * k:i * k + k]
        r0 = sum(map(mul, weights, self._basis[first]))
        r1 = sum(map(mul, weights, self._basis[second]))
        return center + self._offset[i] + r0 + fraction * (r1 - r0), self._scale[i] * self._shape[nearest]


def _both_sides(stored: _Stored) -> npt.NDArray[np.float64]:
    """A stored model's thresholds per cohort, above then below (format 1: the same for both)."""
    width = len(LEVELS) if stored.version == 1 else 2 * len(LEVELS)
    try:
        rows = np.array(stored.cohort_thresholds, dtype=np.float64).reshape(-1, width)
    except ValueError as error:
        raise ValueError(f"not a stored ML model: {error}") from error
    return np.hstack([rows, rows]) if stored.version == 1 else rows
