"""The seasonal clock: which slot of the week a timestamp falls in, on a clock the service may scale.

Devices follow daily and weekly rhythms (shifts, nights, weekends), so the model keeps its normal
band per slot of the week (``slots_per_hour`` slots an hour: 336 half hours by default) and draws a
straight line between neighbouring slots' centres, so a rhythm that rises within an hour (a job at
02:00) is followed, not rounded to a step. The hour is not a constant: with ``--time-scale 100``
the service's week lasts 100 times less, and a test or demo trains in seconds — so the hour's
length and the origin (a Monday 00:00, which names the slots "Tuesday 14:30") are settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iotdefender.engine.ml import kernels

HOURS_PER_DAY = 24
DAYS_PER_WEEK = 7
HOURS_PER_WEEK = HOURS_PER_DAY * DAYS_PER_WEEK
MONDAY_1970_01_05 = 345_600.0  # epoch seconds of the first Monday 00:00 UTC
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class SeasonalClock:
    hour_seconds: float = 3600.0
    origin: float = MONDAY_1970_01_05  # a Monday 00:00 on the (possibly scaled) clock
    slots_per_hour: int = 2

    def __post_init__(self) -> None:
        if not (self.hour_seconds > 0 and math.isfinite(self.hour_seconds) and math.isfinite(self.origin)):
            raise ValueError("hour_seconds must be a positive finite number and origin finite")
        if not 1 <= self.slots_per_hour <= 60:
            raise ValueError("slots_per_hour must be between 1 and 60")

    @property
    def slots(self) -> int:
        """Slots in a week."""
        return HOURS_PER_WEEK * self.slots_per_hour

    @property
    def slots_per_day(self) -> int:
        return HOURS_PER_DAY * self.slots_per_hour

    @property
    def slot_seconds(self) -> float:
        return self.hour_seconds / self.slots_per_hour

    def slot(self, at: float) -> int:
        """The slot ``at`` falls in: 0 = Monday 00:00 onwards."""
        return int((at - self.origin) // self.slot_seconds) % self.slots

    def between(self, at: float) -> tuple[int, int, float]:
        """(slot whose centre is at or before ``at``, the next slot, how far ``at`` is from the first to the second)."""
        position = (at - self.origin) / self.slot_seconds - 0.5
        floor = math.floor(position)
        first = floor % self.slots
        return first, (first + 1) % self.slots, position - floor

    def slots_of(self, times: npt.NDArray[np.floating]) -> npt.NDArray[np.int16]:
        """``slot`` over an array."""
        slots = np.floor((times - self.origin) / self.slot_seconds)  # as exact as Python's //, 3x quicker
        slots -= self.slots * np.floor(slots / self.slots)
        result: npt.NDArray[np.int16] = slots.astype(np.int16)
        return result

    def between_all(self, times: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16],
                                                                    npt.NDArray[np.float32]]:
        """``between`` over an array (float64 epoch seconds, as ``TrainingData.time``): one compiled
        loop, the same arithmetic as ``between`` (kernels.between_all)."""
        seconds: npt.NDArray[np.float64] = np.ascontiguousarray(times, dtype=np.float64)
        first = np.empty(len(seconds), dtype=np.int16)
        second = np.empty(len(seconds), dtype=np.int16)
        fraction = np.empty(len(seconds), dtype=np.float32)
        kernels.between_all(seconds, self.origin, self.slot_seconds, self.slots, first, second, fraction)
        return first, second, fraction

    def first_of(self, times: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        """``between_all``'s first slot (as int32) and fraction, for training's pass over every
        datapoint (refit.py: 400M at 100k devices). The week's modulo is a look-up in a table over
        the slots the times span (a remainder per datapoint cost 1.1-1.4 ms of ~7 per 500k)."""
        position = np.multiply(times, 1.0 / self.slot_seconds)
        position -= self.origin / self.slot_seconds + 0.5
        whole = np.floor(position)
        position -= whole
        fraction = position.astype(np.float32)
        del position
        count = whole.astype(np.int64)
        del whole
        if not len(count):
            return count.astype(np.int32), fraction
        low, high = int(count.min()), int(count.max())
        if high - low > 1_000_000:  # times over more than ~50 years: the remainder after all
            first: npt.NDArray[np.int32] = (count % self.slots).astype(np.int32)
            return first, fraction
        count -= low
        first = (np.arange(low, high + 1, dtype=np.int64) % self.slots).astype(np.int32).take(count)
        return first, fraction

    def hour_of_week(self, at: float) -> int:
        """0 = Monday 00:00-01:00 … 167 = Sunday 23:00-24:00."""
        return self.slot(at) // self.slots_per_hour

    def label(self, slot: int, *, every: bool = False) -> str:
        """``Tuesday 14:30`` for slot 77 at two slots an hour (``Tuesdays 14:30`` with ``every``)."""
        day, rest = divmod(slot, self.slots_per_day)
        hour, part = divmod(rest, self.slots_per_hour)
        return f"{_DAYS[day]}{'s' if every else ''} {hour:02d}:{part * 60 // self.slots_per_hour:02d}"


def between_table(table: npt.NDArray[np.float32], first: npt.NDArray[np.integer], second: npt.NDArray[np.integer],
                  fraction: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The line between ``table[first]`` and ``table[second]``, ``fraction`` of the way: a value per
    slot (or per device and slot, flattened) at times between slot centres (``between_all``)."""
    low = table[first]
    result: npt.NDArray[np.float32] = low + fraction * (table[second] - low)
    return result
