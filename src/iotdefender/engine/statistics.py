"""Fleet-wide percentile thresholds for ``statisticalThreshold`` behaviors.

Each (profile, behavior) has a window grid of ``durationSeconds`` (300 s by default, divided by the
time scale). Within a window the latest measurement of every device is kept; when a window ends,
its percentile becomes the threshold for the whole next window ("recomputed every window").

Warm-up (AWS documents none): until a completed window holds measurements from at least
``min_devices`` devices there is no threshold, and the behavior is not evaluated — its devices
neither raise nor clear alarms. Percentiles use linear interpolation between closest ranks
(numpy's default), over all devices the profile monitors.

The series a batch changes are changed in that batch's ``StatisticsChanges`` (later reports of
the batch see them), and become the committed series only through ``apply``, after the batch's
transaction committed: a batch that fails leaves the statistics as they were. A change records
only the devices the batch observed, so a batch costs what it observes, not the fleet's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from iotdefender.engine.sorted_runs import SortedRuns

MIN_DEVICES = 5


def statistic_to_percent(statistic: str) -> float:
    """``p99.9`` -> 99.9 (the model's EvaluationStatistic pattern)."""
    return float(statistic[1:])


SeriesKey = tuple[str, str]  # (profile, behavior)


class SharedWindows(Protocol):
    """Cluster mode: the other detect nodes' values of a series' ended window (each node holds its
    own partitions' devices). Chosen over a sketch: the fleet's percentile is then exactly the one
    box's, at the cost of sending each device's value once per window (cluster/fleet_statistics.py).
    The population comes as sorted runs, one per node, whose percentile is numpy's without merging
    them (engine/sorted_runs.py)."""

    def population(self, key: SeriesKey, window: int, own: Mapping[str, float]) -> tuple[int, SortedRuns]:
        """(a version that changes whenever another node's values of the window arrive whole, every
        device's value of the window: ``own`` and the other nodes' devices not in it)."""
        ...

    def version(self, key: SeriesKey, window: int) -> int:
        """The version ``population`` would give, without merging the values (asked at every evaluation)."""
        ...


@dataclass
class _Series:
    window: int | None = None
    values: dict[str, float] = field(default_factory=dict)  # each device's latest value in the window
    threshold: float | None = None
    threshold_window: int | None = None
    population: int = 0
    window_s: float = 0.0
    closed: dict[str, float] = field(default_factory=dict)  # this node's values of threshold_window - 1
    shared_version: int = -1  # of the other nodes' values the threshold was computed with
    published: int | None = None  # the last ended window whose values were handed to ``ended``


@dataclass
class _Pending:
    """A series as a batch would leave it, without copying the fleet's values.

    ``series`` carries the window, threshold and population after any window the batch closed,
    and in ``values`` only the devices the batch observed; ``base`` is the committed values still
    in the window (the committed dict itself, read only), or empty once the batch closed it.
    """

    series: _Series
    base: dict[str, float]

    def values(self) -> dict[str, float]:
        return {**self.base, **self.series.values}


StatisticsChanges = dict[SeriesKey, _Pending]


@dataclass
class FleetStatistics:
    """The committed series; ``observe`` and ``threshold`` record what they change in ``changes``
    (one batch's), and ``apply`` makes that current once the batch is durable."""

    min_devices: int = MIN_DEVICES
    shared: SharedWindows | None = None  # cluster mode: the other detect nodes' devices
    _series: dict[SeriesKey, _Series] = field(default_factory=dict)

    def _pending(self, key: SeriesKey, changes: StatisticsChanges) -> _Pending:
        pending = changes.get(key)
        if pending is None:
            committed = self._series.get(key)
            if committed is None:
                pending = _Pending(_Series(), {})
            else:
                pending = _Pending(_Series(committed.window, {}, committed.threshold, committed.threshold_window,
                                           committed.population, committed.window_s, committed.closed,
                                           committed.shared_version, committed.published), committed.values)
            changes[key] = pending
        return pending

    def _roll(self, key: SeriesKey, pending: _Pending, window: int, statistic: str) -> None:
        series = pending.series
        if series.window is None:
            series.window = window
            if self.shared is None:
                return
            series.threshold_window = window  # the other nodes may have the window before this one
            series.closed = {}
            self._compute(key, series, statistic)
            return
        if window == series.window:
            return
        # A window closed: its percentile holds for the window that follows it only.
        series.closed = pending.values() if window == series.window + 1 else {}
        series.threshold_window = window
        series.window = window
        series.values = {}
        pending.base = {}
        self._compute(key, series, statistic)

    def _compute(self, key: SeriesKey, series: _Series, statistic: str) -> None:
        """The threshold of ``series.threshold_window``: the percentile of the window before it,
        over this node's devices and (cluster mode) the other nodes' known so far."""
        percent = statistic_to_percent(statistic)
        population: SortedRuns | np.ndarray
        if self.shared is not None and series.threshold_window is not None:
            # Sorted runs, one per node: their percentile without merging them (engine/sorted_runs.py).
            series.shared_version, population = self.shared.population(key, series.threshold_window - 1,
                                                                       series.closed)
        else:
            population = np.fromiter(series.closed.values(), dtype=float, count=len(series.closed))
        if len(population) >= self.min_devices:
            series.threshold = (population.percentile(percent) if isinstance(population, SortedRuns)
                                else float(np.percentile(population, percent)))
            series.population = len(population)
        else:
            series.threshold = None
            series.population = 0

    def observe(self, key: SeriesKey, statistic: str, window_s: float, thing: str, value: float,
                now: float, changes: StatisticsChanges) -> None:
        pending = self._pending(key, changes)
        self._roll(key, pending, int(now // window_s), statistic)
        pending.series.window_s = window_s
        pending.series.values[thing] = value

    def threshold(self, key: SeriesKey, statistic: str, window_s: float, now: float,
                  changes: StatisticsChanges) -> tuple[float, int] | None:
        """(threshold, devices it was computed from) in force at ``now``, or None in warm-up."""
        window = int(now // window_s)
        pending = changes.get(key)
        series = pending.series if pending is not None else self._series.get(key)
        if series is None:
            return None
        if series.window != window:  # a window closed: that changes the series
            pending = self._pending(key, changes)
            self._roll(key, pending, window, statistic)
            series = pending.series
        elif self.shared is not None and series.threshold_window == window \
                and self.shared.version(key, window - 1) != series.shared_version:
            pending = self._pending(key, changes)  # more of the other nodes' values arrived
            self._compute(key, pending.series, statistic)
            series = pending.series
        if series.threshold is None:
            return None
        return series.threshold, series.population

    def apply(self, changes: StatisticsChanges) -> None:
        """Make a durable batch's observations and closed windows current."""
        for key, pending in changes.items():
            committed = self._series.get(key)
            if committed is not None and pending.base is committed.values:
                committed.values.update(pending.series.values)  # the same window: the batch's devices join it
                committed.threshold, committed.population = pending.series.threshold, pending.series.population
                committed.shared_version, committed.window_s = pending.series.shared_version, pending.series.window_s
            else:
                series = pending.series
                self._series[key] = _Series(series.window, pending.values(), series.threshold, series.threshold_window,
                                            series.population, series.window_s, series.closed, series.shared_version,
                                            series.published)

    def ended(self, now: float) -> list[tuple[SeriesKey, int, dict[str, float]]]:
        """Cluster mode: this node's values of every series' window that ended before ``now`` and
        was not handed out yet, (series, window, {device: value}), for the other detect nodes.
        Called on a timer, since a node rolls a window only when its next datapoint comes."""
        out = []
        for key, series in self._series.items():
            if series.window is None or not series.window_s:
                continue
            current = int(now // series.window_s)
            if series.window < current and series.published != series.window:
                out.append((key, series.window, dict(series.values)))
                series.published = series.window
            elif series.window == current and series.threshold_window == current \
                    and series.published != current - 1 and series.closed:
                out.append((key, current - 1, dict(series.closed)))
                series.published = current - 1
        return out
