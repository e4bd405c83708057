"""The alarm state machine of one (thing, security profile, behavior, dimension).

Named states and one function that advances them, as Prometheus' alerting rules do:

    NORMAL --violating x consecutiveDatapointsToAlarm--> IN_ALARM   (event in-alarm, new violationId)
    IN_ALARM --compliant x consecutiveDatapointsToClear--> NORMAL   (event alarm-cleared)
    IN_ALARM --invalidate()--> NORMAL                               (event alarm-invalidated)

Counters reset whenever the other kind of datapoint arrives, so "consecutive" means consecutive.
While in alarm, further violating datapoints only refresh lastViolationValue/lastViolationTime:
one event per transition (reference §5.3).

Pure: the time of a datapoint and the id of a new violation are passed in (``new_id``), so the
same inputs give the same transitions — which is what lets a backtest be replayed and a test
compare two runs event for event.

``silent`` is the one rule for "the device went silent, its alarm is invalidated": the live sweep,
the backtest's per-datapoint replay and its vectorised path all ask it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

IdFactory = Callable[[], str]  # a new violationId each call
Point = tuple[float, dict[str, Any]]  # (time, MetricValue) of one datapoint


class AlarmStatus(str, Enum):
    NORMAL = "normal"
    IN_ALARM = "in-alarm"


class EventType(str, Enum):
    IN_ALARM = "in-alarm"
    CLEARED = "alarm-cleared"
    INVALIDATED = "alarm-invalidated"


@dataclass(frozen=True)
class AlarmState:
    status: AlarmStatus = AlarmStatus.NORMAL
    violating_streak: int = 0
    compliant_streak: int = 0
    violation_id: str | None = None
    violation_start: float | None = None
    last_violation_value: dict[str, Any] | None = None
    last_violation_time: float | None = None
    last_datapoint_at: float | None = None
    # The datapoints (time, value) of the streak under way that did not yet cause a transition:
    # violating ones while NORMAL, compliant ones while IN_ALARM, at most one fewer than the
    # transition needs. With consecutiveDatapointsToAlarm/ToClear above 1 the event's evidence is
    # then every datapoint it was judged on, not only the last; saved with the state, so a
    # restart in the middle of a streak keeps them.
    streak_points: tuple[Point, ...] = ()

    @property
    def is_idle(self) -> bool:
        """Nothing worth remembering: the state of a thing that never violated."""
        return self.status is AlarmStatus.NORMAL and self.violating_streak == 0


@dataclass(frozen=True)
class Transition:
    event: EventType
    state: AlarmState  # the state after the transition
    violation_id: str
    value: dict[str, Any] | None
    at: float
    # The consecutive datapoints that caused it, oldest first (the last one is ``value`` at ``at``).
    datapoints: tuple[Point, ...] = ()


def counting_ids(start: int = 1) -> IdFactory:
    """Ids 1, 2, 3... written as AWS writes violationIds (32 lower-case hex characters).

    For replays whose ids are never shown (backtests) and for tests that compare runs; the live
    service passes random ids, which stay unique across restarts.
    """
    counter = itertools.count(start)
    return lambda: f"{next(counter):032x}"


def advance(state: AlarmState, violating: bool, value: dict[str, Any], at: float,
            to_alarm: int, to_clear: int, new_id: IdFactory) -> tuple[AlarmState, Transition | None]:
    """Apply one datapoint; returns the new state and the transition it caused, if any
    (``new_id`` is called once per in-alarm transition)."""
    if not violating and state.is_idle:
        return state, None  # the common case (a compliant device): nothing to remember
    point = (at, value)
    if violating:
        streak = state.violating_streak + 1
        if state.status is AlarmStatus.IN_ALARM:
            return replace(state, violating_streak=streak, compliant_streak=0, last_violation_value=value,
                           last_violation_time=at, last_datapoint_at=at, streak_points=()), None
        if streak >= to_alarm:
            violation_id = new_id()
            after = AlarmState(AlarmStatus.IN_ALARM, streak, 0, violation_id, at, value, at, at)
            return after, Transition(EventType.IN_ALARM, after, violation_id, value, at,
                                     _judged_on(state.streak_points, point, to_alarm))
        return replace(state, violating_streak=streak, compliant_streak=0, last_datapoint_at=at,
                       streak_points=_kept(state.streak_points, point, to_alarm)), None
    if state.status is AlarmStatus.IN_ALARM:
        streak = state.compliant_streak + 1
        if streak >= to_clear:
            assert state.violation_id is not None
            after = AlarmState(last_datapoint_at=at)
            return after, Transition(EventType.CLEARED, after, state.violation_id, value, at,
                                     _judged_on(state.streak_points, point, to_clear))
        return replace(state, compliant_streak=streak, violating_streak=0, last_datapoint_at=at,
                       streak_points=_kept(state.streak_points, point, to_clear)), None
    return AlarmState(), None  # a violating streak broken before it raised an alarm


def _kept(points: tuple[Point, ...], point: Point, needed: int) -> tuple[Point, ...]:
    """The streak's points once ``point`` joined it, without more than a transition needs."""
    return (*points, point)[-(needed - 1):] if needed > 1 else ()


def _judged_on(points: tuple[Point, ...], point: Point, needed: int) -> tuple[Point, ...]:
    return (*points, point)[-needed:] if needed > 1 else (point,)


def invalidate(state: AlarmState, at: float) -> tuple[AlarmState, Transition | None]:
    """End an alarm whose information is gone (device silent, behavior or target removed)."""
    if state.status is not AlarmStatus.IN_ALARM or state.violation_id is None:
        return AlarmState(), None
    return AlarmState(), Transition(EventType.INVALIDATED, AlarmState(), state.violation_id,
                                    state.last_violation_value, at)


@overload
def silent(last_datapoint_at: float, now: float, period: float) -> bool: ...


@overload
def silent(last_datapoint_at: NDArray[np.float64], now: NDArray[np.float64] | float,
           period: float) -> NDArray[np.bool_]: ...


def silent(last_datapoint_at: Any, now: Any, period: float) -> Any:
    """Did the device send nothing for longer than the invalidation period before ``now``?

    The one rule for "device silent -> alarm-invalidated" (AWS documents the rule, not its
    boundary: exactly one period of silence is not yet silent). Written once as a difference so
    that scalars (the live sweep, the backtest's replay) and numpy arrays (the vectorised
    backtest) get the same answer to the last bit of a float.
    """
    return now - last_datapoint_at > period


def due_for_invalidation(state: AlarmState, now: float, period: float) -> bool:
    """An alarm whose device went ``silent``; a state saved without a datapoint time counts as silent."""
    return state.status is AlarmStatus.IN_ALARM and silent(state.last_datapoint_at or 0.0, now, period)
