"""Fleet-wide percentile thresholds for ``statisticalThreshold`` behaviors.

Each (profile, behavior) has a window grid of ``durationSeconds`` (300 s by default, divided by the
time scale). Within a window the latest measurement of every device is kept; when a window ends,
its percentile becomes the threshold for the whole next window ("recomputed every window").

Warm-up (AWS documents none): until a completed window holds measurements from at least
``min_devices`` devices there is no threshold, and the behavior is not evaluated — its devices
neither raise nor clear alarms. Percentiles use linear interpolation between closest ranks
(numpy's default), over all devices the profile monitors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_DEVICES = 5


def statistic_to_percent(statistic: str) -> float:
    """``p99.9`` -> 99.9 (the model's EvaluationStatistic pattern)."""
    return float(statistic[1:])


@dataclass
class _Series:
    window: int | None = None
    values: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    threshold_window: int | None = None
    population: int = 0


@dataclass
class FleetStatistics:
    min_devices: int = MIN_DEVICES
    _series: dict[tuple[str, str], _Series] = field(default_factory=dict)

    def _roll(self, series: _Series, window: int, statistic: str) -> None:
        if series.window is None:
            series.window = window
            return
        if window == series.window:
            return
        # A window closed: its percentile holds for the window that follows it only.
        if window == series.window + 1 and len(series.values) >= self.min_devices:
            series.threshold = float(np.percentile(np.fromiter(series.values.values(), float),
                                                   statistic_to_percent(statistic)))
            series.population = len(series.values)
        else:
            series.threshold = None
            series.population = 0
        series.threshold_window = window
        series.window = window
        series.values = {}

    def observe(self, key: tuple[str, str], statistic: str, window_s: float, thing: str, value: float,
                now: float) -> None:
        series = self._series.setdefault(key, _Series())
        self._roll(series, int(now // window_s), statistic)
        series.values[thing] = value

    def threshold(self, key: tuple[str, str], statistic: str, window_s: float,
                  now: float) -> tuple[float, int] | None:
        """(threshold, devices it was computed from) in force at ``now``, or None in warm-up."""
        series = self._series.get(key)
        if series is None:
            return None
        self._roll(series, int(now // window_s), statistic)
        if series.threshold is None:
            return None
        return series.threshold, series.population
