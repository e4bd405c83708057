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

from iotdefender.engine.alarm import EventType, silent

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
    """A stable sort by thing then time: datapoints of one thing at one time keep their arrival order.

    History arrives per device in time order, so a stable sort by thing alone (numpy's radix sort
    for 16-bit keys, applied twice for larger fleets: linear time) usually suffices; the full
    two-key sort runs only when some device's datapoints are out of order.
    """
    if len(thing_index) == 0:
        return np.empty(0, dtype=np.intp)
    low = np.argsort((thing_index & 0xFFFF).astype(np.uint16), kind="stable")
    high_keys = (thing_index[low] >> 16).astype(np.uint16)
    order = low if not high_keys.any() else low[np.argsort(high_keys, kind="stable")]
    things, ordered_times = thing_index[order], times[order]
    if np.any((things[1:] == things[:-1]) & (ordered_times[1:] < ordered_times[:-1])):
        order = np.lexsort((times, thing_index))
    return order


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
    sums: np.ndarray = np.trunc(cumulative[1:] - cumulative[first_inside])
    return sums


def violating(operator: str, measured: np.ndarray, threshold: float) -> np.ndarray:
    """Behaviors describe normal behavior: a datapoint violates when the comparison fails."""
    compliant: np.ndarray = _OPERATORS[operator](measured, threshold)
    return ~compliant


def alarm_transitions(thing_index: np.ndarray, times: np.ndarray, measured: np.ndarray, bad: np.ndarray,
                      to_alarm: int, to_clear: int, invalidation_s: float, end: float) -> Transitions:
    """Every transition; see ``_state_machine``."""
    result = _state_machine(thing_index, times, measured, bad, to_alarm, to_clear, invalidation_s, end, False)
    assert isinstance(result, Transitions)
    return result


def alarms_raised(thing_index: np.ndarray, times: np.ndarray, measured: np.ndarray, bad: np.ndarray,
                  to_alarm: int, to_clear: int, invalidation_s: float, end: float) -> np.ndarray:
    """The thing index of every in-alarm transition, unordered: what a threshold sweep counts."""
    result = _state_machine(thing_index, times, measured, bad, to_alarm, to_clear, invalidation_s, end, True)
    assert isinstance(result, np.ndarray)
    return result


def _state_machine(thing_index: np.ndarray, times: np.ndarray, measured: np.ndarray, bad: np.ndarray,
                   to_alarm: int, to_clear: int, invalidation_s: float, end: float, raised_only: bool
                   ) -> Transitions | np.ndarray:
    """in-alarm / alarm-cleared / alarm-invalidated for sorted datapoints, as ``alarm.advance`` would.

    Runs of equal verdicts decide everything: NORMAL ends at a run of >= ``to_alarm`` violating
    datapoints (a compliant datapoint resets the streak, so shorter runs never count), IN_ALARM at
    a run of >= ``to_clear`` compliant ones (shorter ones never count either). Keeping only those
    qualifying runs, a transition happens wherever their kind changes within a device — computed
    over whole arrays. A device silent for longer than ``invalidation_s`` while in alarm gets
    alarm-invalidated (as the live sweep does) and starts counting afresh, which depends on the
    state at the silence; those few devices go through ``_transitions_by_jumps``.
    """
    n = len(times)
    if n == 0 or not bad.any():
        return np.empty(0, dtype=np.int32) if raised_only else _transitions(([], [], [], []), [])
    new_thing = np.ones(n, dtype=bool)
    new_thing[1:] = thing_index[1:] != thing_index[:-1]
    gap = np.zeros(n, dtype=bool)
    gap[1:] = ~new_thing[1:] & silent(times[:-1], times[1:], invalidation_s)
    silent_things = np.unique(thing_index[gap])
    events, active = _transitions_by_jumps(thing_index, times, measured, bad, to_alarm, to_clear, invalidation_s,
                                           end, silent_things) if len(silent_things) else (([], [], [], []), [])

    boundary = new_thing.copy()
    boundary[1:] |= bad[1:] != bad[:-1]
    starts = np.flatnonzero(boundary)
    lengths = np.diff(np.append(starts, n))
    run_bad = bad[starts]
    run_thing = thing_index[starts]
    keep = np.where(run_bad, lengths >= to_alarm, lengths >= to_clear)
    if len(silent_things):
        keep &= ~np.isin(run_thing, silent_things)
    q_start, q_bad, q_thing = starts[keep], run_bad[keep], run_thing[keep]
    first = np.ones(len(q_start), dtype=bool)
    first[1:] = q_thing[1:] != q_thing[:-1]
    was_bad = np.zeros(len(q_start), dtype=bool)
    was_bad[1:] = q_bad[:-1]
    was_bad &= ~first  # every device starts NORMAL
    raised = q_start[q_bad & ~was_bad] + to_alarm - 1
    if raised_only:
        jumped = [t for t, kind in zip(events[0], events[2]) if kind is EventType.IN_ALARM]
        every: np.ndarray = np.concatenate((thing_index[raised], np.asarray(jumped, dtype=np.int32)))
        return every
    cleared = q_start[~q_bad & was_bad] + to_clear - 1
    # Devices whose last qualifying run violates are still in alarm after their last datapoint.
    last = np.ones(len(q_start), dtype=bool)
    last[:-1] = first[1:]
    thing_last = np.append(np.flatnonzero(new_thing)[1:], n) - 1
    ending = q_thing[last & q_bad]
    ending_at = thing_last[np.searchsorted(thing_index[thing_last], ending)]
    stale = silent(times[ending_at], end, invalidation_s)
    # Its last violating datapoint (a short compliant run may follow it) is the value it had.
    last_bad = np.maximum.accumulate(np.where(bad, np.arange(n), -1))[ending_at]
    for kind, index, at, value in (
            (EventType.IN_ALARM, raised, times[raised], measured[raised]),
            (EventType.CLEARED, cleared, times[cleared], measured[cleared]),
            (EventType.INVALIDATED, ending_at[stale], times[ending_at[stale]] + invalidation_s,
             measured[last_bad[stale]])):
        events[0].extend(thing_index[index].tolist())
        events[1].extend(at.tolist())
        events[2].extend([kind] * len(index))
        events[3].extend(value.tolist())
    active.extend(ending[~stale].tolist())
    return _transitions(events, active)


def _transitions_by_jumps(thing_index: np.ndarray, times: np.ndarray, measured: np.ndarray, bad: np.ndarray,
                           to_alarm: int, to_clear: int, invalidation_s: float, end: float, only_things: np.ndarray
                           ) -> tuple[tuple[list[int], list[float], list[EventType], list[float]], list[int]]:
    """The state machine for devices with silences longer than the invalidation period: it jumps from transition to transition instead of walking datapoints: NORMAL
    ends at the first run of >= ``to_alarm`` violating datapoints (a compliant datapoint resets the
    streak), IN_ALARM at the first run of >= ``to_clear`` compliant ones (a violating one resets
    it) or at a silence longer than ``invalidation_s`` — which the live sweep turns into
    alarm-invalidated at ``last datapoint + invalidation_s``, after which counting starts afresh.
    Python runs once per transition and once per device that ever violates.
    """
    n = len(times)
    events: tuple[list[int], list[float], list[EventType], list[float]] = ([], [], [], [])
    active: list[int] = []
    new_thing = np.ones(n, dtype=bool)
    new_thing[1:] = thing_index[1:] != thing_index[:-1]
    boundary = new_thing.copy()
    boundary[1:] |= bad[1:] != bad[:-1]
    starts = np.flatnonzero(boundary)
    lengths = np.diff(np.append(starts, n))
    run_bad = bad[starts]
    alarm_runs = starts[run_bad & (lengths >= to_alarm)]  # each raises at start + to_alarm - 1
    clear_runs = starts[~run_bad & (lengths >= to_clear)]  # each clears at start + to_clear - 1
    gaps = np.flatnonzero(~new_thing[1:] & silent(times[:-1], times[1:], invalidation_s)) + 1
    run_end = (starts + lengths - 1)[np.cumsum(boundary) - 1]
    last_bad = np.maximum.accumulate(np.where(bad, np.arange(n), -1))
    thing_starts = np.flatnonzero(new_thing)
    thing_ends = np.append(thing_starts[1:], n) - 1
    with_violation = np.intersect1d(np.unique(thing_index[bad]), only_things)
    first_of = dict(zip(thing_index[thing_starts].tolist(), zip(thing_starts.tolist(), thing_ends.tolist())))

    def first_at_or_after(array: np.ndarray, position: int, limit: int) -> int | None:
        i = int(np.searchsorted(array, position))
        return int(array[i]) if i < len(array) and array[i] <= limit else None

    for thing in with_violation.tolist():
        position, last = first_of[thing]
        fresh_at = -1  # where counting restarted after an invalidation, mid-run
        while True:
            raise_at = None
            if fresh_at >= 0 and bad[fresh_at] and run_end[fresh_at] - fresh_at + 1 >= to_alarm:
                raise_at = fresh_at + to_alarm - 1
            else:
                run = first_at_or_after(alarm_runs, position, last)
                if run is not None and run + to_alarm - 1 <= last:
                    raise_at = run + to_alarm - 1
            if raise_at is None:
                break
            _emit(events, thing, float(times[raise_at]), EventType.IN_ALARM, float(measured[raise_at]))
            run = first_at_or_after(clear_runs, raise_at + 1, last)
            clear_at = run + to_clear - 1 if run is not None and run + to_clear - 1 <= last else None
            gap = first_at_or_after(gaps, raise_at + 1, last)
            if gap is not None and (clear_at is None or gap <= clear_at):
                _emit(events, thing, float(times[gap - 1]) + invalidation_s, EventType.INVALIDATED,
                      float(measured[last_bad[gap - 1]]))
                position = fresh_at = gap
                continue
            if clear_at is None:
                if silent(float(times[last]), end, invalidation_s):
                    _emit(events, thing, float(times[last]) + invalidation_s, EventType.INVALIDATED,
                          float(measured[last_bad[last]]))
                else:
                    active.append(thing)
                break
            _emit(events, thing, float(times[clear_at]), EventType.CLEARED, float(measured[clear_at]))
            position, fresh_at = clear_at + 1, -1
    return events, active


def _emit(events: tuple[list[int], list[float], list[EventType], list[float]], thing: int, at: float,
          kind: EventType, value: float) -> None:
    events[0].append(thing)
    events[1].append(at)
    events[2].append(kind)
    events[3].append(value)


def _transitions(events: tuple[list[int], list[float], list[EventType], list[float]], active: list[int]
                 ) -> Transitions:
    """Ordered by thing, then time (an invalidation sorts after the datapoint that preceded it)."""
    things = np.asarray(events[0], dtype=np.int32)
    at = np.asarray(events[1], dtype=np.float64)
    order = np.lexsort((at, things))
    return Transitions(things[order], at[order], [events[2][i] for i in order.tolist()],
                       np.asarray(events[3], dtype=np.float64)[order], np.asarray(sorted(active), dtype=np.int32))
