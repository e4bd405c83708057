"""The seasonal clock: which hour of the week a timestamp falls in, on a clock the service may scale.

Devices follow daily and weekly rhythms (shifts, nights, weekends), so the model keeps one normal
band per hour of the week. The hour is not a constant: with ``--time-scale 100`` the service's
week lasts 100 times less, and a test or demo trains in seconds — so the hour's length and the
origin (a Monday 00:00, which names the buckets "Tuesday 14:00") are settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

HOURS_PER_DAY = 24
DAYS_PER_WEEK = 7
HOURS_PER_WEEK = HOURS_PER_DAY * DAYS_PER_WEEK
MONDAY_1970_01_05 = 345_600.0  # epoch seconds of the first Monday 00:00 UTC
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class SeasonalClock:
    hour_seconds: float = 3600.0
    origin: float = MONDAY_1970_01_05  # a Monday 00:00 on the (possibly scaled) clock

    def __post_init__(self) -> None:
        if not (self.hour_seconds > 0 and math.isfinite(self.hour_seconds) and math.isfinite(self.origin)):
            raise ValueError("hour_seconds must be a positive finite number and origin finite")

    def hour_of_week(self, at: float) -> int:
        """0 = Monday 00:00-01:00 … 167 = Sunday 23:00-24:00."""
        return int(math.floor((at - self.origin) / self.hour_seconds)) % HOURS_PER_WEEK

    def hours_of_week(self, times: npt.NDArray[np.float64]) -> npt.NDArray[np.int16]:
        """``hour_of_week`` over an array (the training path)."""
        hours = np.floor((times - self.origin) / self.hour_seconds)  # as exact as Python's // (no fmod: 3x quicker)
        hours -= HOURS_PER_WEEK * np.floor(hours / HOURS_PER_WEEK)
        result: npt.NDArray[np.int16] = hours.astype(np.int16)
        return result

    @staticmethod
    def label(hour_of_week: int, *, every: bool = False) -> str:
        """``Tuesday 14:00`` for bucket 38 (``Tuesdays 14:00`` with ``every``)."""
        day, hour = divmod(hour_of_week, HOURS_PER_DAY)
        return f"{_DAYS[day]}{'s' if every else ''} {hour:02d}:00"
