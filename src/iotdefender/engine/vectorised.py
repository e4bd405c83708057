"""The alarm state machine over whole arrays: backtests of numeric static behaviors at fleet scale.

Replaying a week of a 10k-device fleet is about 20 million datapoints per metric; calling the
per-datapoint engine for each costs minutes. For the common behaviors — a ``count`` or ``number``
metric, a numeric operator, a fixed threshold, optionally summed over ``durationSeconds`` — the
same semantics can be computed with numpy: the comparison and the rolling sums over whole arrays,
and the alarm state machine over *runs* of equal verdicts rather than over datapoints (a compliant
fleet has one run per device). Everything else (statistical thresholds, sets, CIDRs, the maximum
of a window) goes through ``evaluator.Evaluator``, and tests/unit/test_vectorised.py checks on
random inputs that both give the same transitions as ``alarm.advance``.

Pure: arrays in, transitions out; time is data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iotdefender.engine.alarm import EventType

_OPERATORS = {
    "less-than": np.less,
    "less-than-equals": np.less_equal,
    "greater-than": np.greater,
    "greater-than-equals": np.greater_equal,
}


def supports(operator: str | None) -> bool:
    return operator in _OPERATORS


@dataclass(frozen=True)
class Transitions:
    """Parallel arrays, one entry per event, ordered by thing then time."""

    thing_index: np.ndarray
    times: np.ndarray
    kinds: list[EventType]
    values: np.ndarray  # the measured value of the datapoint (the last violating one for invalidations)
    still_in_alarm: np.ndarray  # thing indexes whose alarm is active at the end of the replay

    def __len__(self) -> int:
        return len(self.kinds)


def order_by_thing_and_time(thing_index: np.ndarray, times: np.ndarray) -> np.ndarray:
    """A stable sort: datapoints of one thing at one time keep their arrival order."""
    return np.lexsort((times, thing_index))


def windowed_sums(thing_index: np.ndarray, times: np.ndarray, values: np.ndarray, window_s: float) -> np.ndarray:
    """Sum of each thing's values in (t - window_s, t], arrays sorted by thing then time.

    As the live engine does, a second datapoint at the same time as the previous one of the
    same thing adds nothing to the history (``Evaluator._measure``).
    """
    if len(times) == 0:
        return values.copy()
    repeated = np.zeros(len(times), dtype=bool)
    repeated[1:] = (thing_index[1:] == thing_index[:-1]) & (times[1:] == times[:-1])
    counted = np.where(repeated, 0.0, values)
    cumulative = np.concatenate(([0.0], np.cumsum(counted)))
    origin = float(times.min())
    span = float(times.max()) - origin + 2 * window_s + 1.0
    keys = thing_index.astype(np.float64) * span + (times - origin)
    first_inside = np.searchsorted(keys, keys - window_s, side="right")
    return np.trunc(cumulative[1:] - cumulative[first_inside])


def violating(operator: str, measured: np.ndarray, threshold: float) -> np.ndarray:
    """Behaviors describe normal behavior: a datapoint violates when the comparison fails."""
    return ~_OPERATORS[operator](measured, threshold)


def alarm_transitions(thing_index: np.ndarray, times: np.ndarray, measured: np.ndarray, bad: np.ndarray,
                      to_alarm: int, to_clear: int, invalidation_s: float, end: float) -> Transitions:
    """in-alarm / alarm-cleared / alarm-invalidated for sorted datapoints, as ``alarm.advance`` would.

    Invalidation as the live sweep does it: an alarm whose device sends nothing for
    ``invalidation_s`` ends at ``last datapoint + invalidation_s`` (when that is before ``end``).
    """
    n = len(times)
    out_thing: list[int] = []
    out_time: list[float] = []
    out_kind: list[EventType] = []
    out_value: list[float] = []
    active: list[int] = []
    if n == 0:
        return Transitions(np.empty(0, np.int32), np.empty(0), [], np.empty(0), np.empty(0, np.int32))
    new_thing = np.ones(n, dtype=bool)
    new_thing[1:] = thing_index[1:] != thing_index[:-1]
    gap = np.zeros(n, dtype=bool)
    gap[1:] = ~new_thing[1:] & (times[1:] - times[:-1] > invalidation_s)
    # Runs of equal verdicts, broken at each new thing and each gap.
    boundary = new_thing | gap
    boundary[1:] |= bad[1:] != bad[:-1]
    starts = np.flatnonzero(boundary)
    lengths = np.diff(np.append(starts, n))
    # Things whose every datapoint complies never leave NORMAL: skip them whole.
    things_with_violation = np.unique(thing_index[bad])
    interesting = np.isin(thing_index[starts], things_with_violation)
    run_starts, run_lengths = starts[interesting].tolist(), lengths[interesting].tolist()
    run_bad = bad[starts[interesting]].tolist()
    run_new = new_thing[starts[interesting]].tolist()
    run_gap = gap[starts[interesting]].tolist()
    thing_of = thing_index.tolist() if len(run_starts) > n // 8 else None

    in_alarm, violating_streak, compliant_streak = False, 0, 0
    last_bad_value = 0.0
    current = -1
    start_prev_end = 0
    for k, start in enumerate(run_starts):
        length = run_lengths[k]
        if run_new[k]:
            if in_alarm:
                _end_of_thing(current, times[start_prev_end], invalidation_s, end, last_bad_value,
                              out_thing, out_time, out_kind, out_value, active)
            current = thing_of[start] if thing_of is not None else int(thing_index[start])
            in_alarm, violating_streak, compliant_streak = False, 0, 0
        elif run_gap[k] and in_alarm:
            out_thing.append(current)
            out_time.append(float(times[start - 1]) + invalidation_s)
            out_kind.append(EventType.INVALIDATED)
            out_value.append(last_bad_value)
            in_alarm, violating_streak, compliant_streak = False, 0, 0
        if run_bad[k]:
            if in_alarm:
                violating_streak += length
            else:
                needed = to_alarm - violating_streak
                violating_streak += length
                if length >= needed:
                    at = start + needed - 1
                    out_thing.append(current)
                    out_time.append(float(times[at]))
                    out_kind.append(EventType.IN_ALARM)
                    out_value.append(float(measured[at]))
                    in_alarm = True
            compliant_streak = 0
            last_bad_value = float(measured[start + length - 1])
        else:
            if in_alarm:
                needed = to_clear - compliant_streak
                if length >= needed:
                    at = start + needed - 1
                    out_thing.append(current)
                    out_time.append(float(times[at]))
                    out_kind.append(EventType.CLEARED)
                    out_value.append(float(measured[at]))
                    in_alarm, compliant_streak = False, 0
                else:
                    compliant_streak += length
            violating_streak = 0
        start_prev_end = start + length - 1
    if in_alarm:
        _end_of_thing(current, times[start_prev_end], invalidation_s, end, last_bad_value,
                      out_thing, out_time, out_kind, out_value, active)
    return Transitions(np.asarray(out_thing, dtype=np.int32), np.asarray(out_time, dtype=np.float64), out_kind,
                       np.asarray(out_value, dtype=np.float64), np.asarray(active, dtype=np.int32))


def _end_of_thing(thing: int, last_time: float, invalidation_s: float, end: float, value: float,
                  out_thing: list[int], out_time: list[float], out_kind: list[EventType], out_value: list[float],
                  active: list[int]) -> None:
    if float(last_time) + invalidation_s <= end:
        out_thing.append(thing)
        out_time.append(float(last_time) + invalidation_s)
        out_kind.append(EventType.INVALIDATED)
        out_value.append(value)
    else:
        active.append(thing)
