"""Evaluate a thing's datapoints against every behavior of every profile that monitors it.

The evaluator owns the engine's state — alarm states, the windows of ``durationSeconds`` and the
fleet statistics — and evaluation never changes it: it records what it would change in a
``ChangeSet`` (later reports of the same batch read through it, so they see the earlier ones'
effects) and returns the events. The caller persists the events and ``changes.states`` in one
transaction and calls ``apply`` only once that committed, so the in-memory state never runs ahead
of the durable one; a batch that fails is simply dropped with its change set. The profiles, the
time and the violation ids (``new_id``) are passed in.

Device-side datapoints and ``durationSeconds`` (AWS leaves the construction undocumented,
reference §10): the delta metrics of ``network_stats`` (bytes and packets in/out) are summed over
the trailing ``durationSeconds``; every other metric is evaluated on its latest value.

The windows of ``durationSeconds`` are the stored datapoints of the trailing hour: after a restart
(or when a cluster node takes partitions over) the caller reads them back from the retained
history and hands them to ``load`` / ``load_things`` (``windowed_series`` says which series), so a
window that spans a restart sums exactly what it would have summed without one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iotdefender.engine.alarm import AlarmState, AlarmStatus, EventType, IdFactory, Transition, advance, invalidate
from iotdefender.engine.compare import Check, compile_check, compliant, offending, scalar_of, statistical_threshold
from iotdefender.engine.ml import ConfidenceLevel
from iotdefender.engine.ml_behavior import ActiveModel, MlModels
from iotdefender.engine.ml_behavior import evidence as ml_evidence
from iotdefender.engine.ml_behavior import violates as ml_violates
from iotdefender.engine.series import behavior_series
from iotdefender.engine.statistics import FleetStatistics, SeriesKey, SharedWindows, StatisticsChanges
from iotdefender.engine.vectorised import order_by_thing_and_time
from iotdefender.metrics_catalog import AWAY_SERIES, COUNT_MAX, SIZE_METRICS, is_cloud_side, is_smallest_series

# Counts per report (device side) or per window (cloud side): summed over durationSeconds.
DELTA_METRICS = frozenset({"aws:all-bytes-in", "aws:all-bytes-out", "aws:all-packets-in", "aws:all-packets-out",
                           "aws:num-connection-attempts", "aws:num-disconnects", "aws:num-authorization-failures",
                           "aws:num-messages-sent", "aws:num-messages-received"})
# Message sizes: the largest message of the windows inside durationSeconds, or the smallest for
# the companion series an "at least" behavior reads (metrics_catalog.smallest_series). Windows
# without messages have no datapoint, so they are not inside: no message, nothing to judge.
MAX_METRICS = SIZE_METRICS
DEFAULT_WINDOW_S = 300.0
WINDOW_HORIZON_S = 3600.0  # the longest durationSeconds (the model's maximum): how far windows reach back

# thing -> series -> (time, value) datapoints, as stored: what a restart refills the windows from.
StoredWindows = Mapping[str, Mapping[str, Iterable[tuple[float, float]]]]

StateKey = tuple[str, str, str, str]  # (thing, profile, behavior, dimension)


@dataclass(frozen=True)
class RefilledWindows:
    """Stored windows already in the evaluator's form (``refilled``): built before the caller takes
    the lock that excludes evaluation, so only installing them happens under it (a takeover of a
    partition's share of 10M devices spent ~2 s building them)."""

    by_thing: dict[str, dict[str, tuple[tuple[float, float], ...]]]


def refilled(windows: StoredWindows) -> RefilledWindows:
    """The windows as ``_measure`` would have built them from these datapoints: in time order,
    a second datapoint at the same time as the previous one adding nothing. Each series' points
    are put in columns and refilled by ``refilled_series``, the one implementation of the rule."""
    things = list(windows)
    columns: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for index, by_series in enumerate(windows.values()):
        for series, points in by_series.items():
            column = columns.setdefault(series, ([], [], []))
            for t, v in points:
                column[0].append(index)
                column[1].append(t)
                column[2].append(v)
    by_thing: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {}
    for series, (thing_index, times, values) in columns.items():
        for thing, window in refilled_series(things, np.array(thing_index, dtype=np.int64), np.array(times, dtype=np.float64),
                                             np.array(values, dtype=np.float64)).items():
            by_thing.setdefault(thing, {})[series] = window
    return RefilledWindows({thing: by_thing[thing] for thing in things if thing in by_thing})


def refilled_series(things: list[str], thing_index: np.ndarray, times: np.ndarray, values: np.ndarray
                    ) -> dict[str, tuple[tuple[float, float], ...]]:
    """One series' stored datapoints (columns: each point's thing as an index into ``things``,
    in any order) as each thing's window of it: sorted by thing and time
    (stable), and a datapoint at the same time as the one before it left out, in numpy. A
    takeover of a partition's share of 10M devices spent ~2 s in ``refilled`` sorting and
    comparing every datapoint in Python."""
    if not len(thing_index):
        return {}
    order = order_by_thing_and_time(thing_index, times)
    index, ordered_times = thing_index[order], times[order]
    repeated = np.zeros(len(index), dtype=bool)
    repeated[1:] = (index[1:] == index[:-1]) & (ordered_times[1:] == ordered_times[:-1])
    if repeated.any():
        kept = ~repeated
        order, index, ordered_times = order[kept], index[kept], ordered_times[kept]
    time_list, value_list = ordered_times.tolist(), values[order].tolist()
    cuts = (np.flatnonzero(index[1:] != index[:-1]) + 1).tolist()
    return {things[int(index[first])]: tuple(zip(time_list[first:last], value_list[first:last]))
            for first, last in zip([0, *cuts], [*cuts, len(index)])}


def _refilled(windows: StoredWindows | RefilledWindows) -> RefilledWindows:
    return windows if isinstance(windows, RefilledWindows) else refilled(windows)


def criteria_type(behavior: Mapping[str, Any]) -> str:
    criteria = behavior.get("criteria") or {}
    if criteria.get("mlDetectionConfig"):
        return "MACHINE_LEARNING"
    if criteria.get("statisticalThreshold"):
        return "STATISTICAL"
    return "STATIC"


@dataclass(frozen=True)
class ViolationEvent:
    """One transition, with everything the API, alerts and metrics need, and its evidence."""

    violation_id: str
    event_type: EventType
    thing_name: str
    profile_name: str
    behavior: dict[str, Any]
    metric_value: dict[str, Any] | None
    at: float
    criteria_type: str
    suppressed: bool
    evidence: dict[str, Any]
    state: AlarmState


_IDLE = AlarmState()
_COMPILED_PROFILES_MAX = 4096


def dimension_key_of(behavior: Mapping[str, Any]) -> str:
    """The last part of an alarm's ``StateKey``: the behavior's dimension name and operator, or ""."""
    dimension = behavior.get("metricDimension") or {}
    return f"{dimension.get('dimensionName')}|{dimension.get('operator') or 'IN'}" if dimension else ""


@dataclass(frozen=True, slots=True)
class _Rule:
    """One behavior, with what evaluating it needs worked out once."""

    behavior: dict[str, Any]
    name: str
    metric: str
    series: str | None  # the datapoint key: "metric" or "metric|dimension|operator"
    dimension_key: str
    operator: str  # "" when the criteria have none
    threshold: Any
    check: Check | None
    to_alarm: int
    to_clear: int
    window_s: float | None  # set when durationSeconds or a statistical threshold applies
    statistical: bool
    confidence: ConfidenceLevel | None  # set for an ML behavior

    @property
    def cloud_side(self) -> bool:
        return is_cloud_side(self.metric)

    @staticmethod
    def of(behavior: Mapping[str, Any], time_scale: float) -> _Rule:
        criteria = behavior.get("criteria") or {}
        metric = behavior.get("metric")
        dimension_key = dimension_key_of(behavior)
        series = behavior_series(behavior)
        statistical = bool(criteria.get("statisticalThreshold"))
        has_window = criteria.get("durationSeconds") is not None or statistical
        operator = criteria.get("comparisonOperator") or ""
        threshold = criteria.get("value")
        check = None
        if not statistical and operator and isinstance(threshold, Mapping):
            check = compile_check(operator, threshold)
        seconds = criteria.get("durationSeconds") or DEFAULT_WINDOW_S
        ml = criteria.get("mlDetectionConfig") or {}
        confidence = ConfidenceLevel(ml.get("confidenceLevel") or "HIGH") if ml else None
        return _Rule(dict(behavior), behavior.get("name", ""), metric or "", series, dimension_key, operator,
                     threshold, check, criteria.get("consecutiveDatapointsToAlarm") or 1,
                     criteria.get("consecutiveDatapointsToClear") or 1,
                     float(seconds) / time_scale if has_window and not ml else None, statistical, confidence)


class StaleChanges(RuntimeError):
    """A change set built on a state that has changed since: applying it would lose updates."""


@dataclass
class ChangeSet:
    """What evaluations would change in the evaluator's state, made current by ``Evaluator.apply``.

    ``states`` holds every alarm state the evaluations changed (idle ones included: they are
    deleted), which is what the caller persists; ``windows`` the new contents of the
    ``durationSeconds`` windows they touched; ``statistics`` the fleet statistics they observed.
    """

    generation: int  # the evaluator state it was built on
    states: dict[StateKey, AlarmState] = field(default_factory=dict)
    windows: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)  # (thing, series)
    statistics: StatisticsChanges = field(default_factory=dict)


@dataclass
class Evaluation:
    events: list[ViolationEvent]
    changes: ChangeSet


@dataclass(frozen=True)
class HeldThings:
    """The things an evaluator held at one moment (``Evaluator.things_held``, ``listed``) and those
    of them a selection takes (``selected``), sorted outside the detection lock.

    Asking the selection (a BLAKE2b hash of the thing's name, ~1.4 µs) about every thing a node
    held, under the lock, stopped every partition's batches for ~0.7 s at a 10M fleet's per-node
    share (bench/takeover_install.py). Listing takes ~0.06 s of it. ``may_have_grown`` says things
    may have been added between the listing and the drop (a batch, a settled commit): those
    are asked about then, under the lock, found by a set difference (~0.1 s at that share)."""

    listed: AbstractSet[str]
    selected: Collection[str]
    may_have_grown: bool = True

    @classmethod
    def sorted_by(cls, listed: AbstractSet[str], owns: Callable[[str], bool], *,
                  may_have_grown: bool = True) -> HeldThings:
        return cls(listed, [thing for thing in listed if owns(thing)], may_have_grown)


@dataclass
class Evaluator:
    new_id: IdFactory = field(compare=False)  # the violationId of each new alarm
    time_scale: float = 1.0
    _states: dict[StateKey, AlarmState] = field(default_factory=dict, init=False)
    _statistics: FleetStatistics = field(default_factory=FleetStatistics, init=False)
    # thing -> series -> ((time, value), ...) inside the longest duration: one small dict per thing
    # keeps the per-device footprint low (bench/engine_state.py). Tuples of floats, in a dict of
    # them, are untracked by the garbage collector once it has seen them (CPython untracks tuples
    # and dicts holding only untracked objects): a list per thing kept 15,000 dicts and lists in
    # every full collection of the detection worker at 15,000 devices.
    _history: dict[str, dict[str, tuple[tuple[float, float], ...]]] = field(default_factory=dict, init=False)
    _generation: int = field(default=0, init=False, compare=False)  # how many change sets were applied
    _compiled: dict[int, tuple[Mapping[str, Any], list[_Rule]]] = field(default_factory=dict, init=False,
                                                                          compare=False)
    _models: MlModels = field(default_factory=dict, init=False, compare=False)

    # -- ML Detect's models: data, swapped whole when training publishes -------------------------
    def use_models(self, models: MlModels) -> None:
        """Evaluate ML behaviors with these models from now on (a behavior without one is not
        evaluated: its model is pending, expired, or of a metric it no longer has)."""
        self._models = models

    def model_for(self, profile: str, behavior: Mapping[str, Any]) -> ActiveModel | None:
        """The model an ML behavior is evaluated with now, if any."""
        active = self._models.get((profile, behavior.get("name", "")))
        return active if active is not None and active.series == behavior_series(behavior) else None

    # -- the state: loaded, asked about, changed only by apply -----------------------------------
    @property
    def window_horizon(self) -> float:
        """How far back the windows of ``durationSeconds`` reach (the longest duration, scaled)."""
        return WINDOW_HORIZON_S / self.time_scale

    def windowed_series(self, profiles: Iterable[Mapping[str, Any]]) -> set[str]:
        """The series whose datapoints these profiles sum (or take the maximum of) over
        ``durationSeconds``: those a restart refills the windows of."""
        return {rule.series for profile in profiles for rule in self._rules_of(profile)
                if rule.series is not None and rule.window_s is not None
                and (rule.metric in DELTA_METRICS or rule.metric in MAX_METRICS)}

    def load(self, states: Mapping[StateKey, AlarmState], windows: StoredWindows | RefilledWindows | None = None
             ) -> None:
        """Start from durable alarm states (after a restart) and, if given, the windows of
        ``durationSeconds`` from the stored datapoints (``windows``, each thing's series in any
        order, or ``refilled`` already); the fleet statistics start empty."""
        self._states = {key: state for key, state in states.items() if not state.is_idle}
        if windows is not None:
            self._history = dict(_refilled(windows).by_thing)
        self._generation += 1

    def load_things(self, owns: Callable[[str], bool], states: Mapping[StateKey, AlarmState],
                    windows: StoredWindows | RefilledWindows | None = None, *,
                    held: HeldThings | None = None, selected: bool = False) -> None:
        """Start the things ``owns`` selects (a cluster partition a node took over) from durable
        alarm states and the stored datapoints of their windows, leaving every other thing's state
        alone.

        Their windows are refilled as after a restart; the fleet statistics are this evaluator's
        own observations and are not reloaded (docs/cluster.md). ``states`` and ``windows`` may hold
        other things' too (only the selected things' are taken), unless ``selected`` says they are
        the selected things' only. Change sets built before this one are stale: the caller holds
        the lock that excludes a batch in flight and has settled any unconfirmed one first.

        What this evaluator held of the selected things is dropped first: ``HeldThings`` found
        outside the caller's lock, when given, else by asking ``owns`` about every thing held.
        """
        self._drop(owns, held)
        self._states.update({key: state for key, state in states.items()
                             if (selected or owns(key[0])) and not state.is_idle})
        if windows is not None:
            self._history.update({thing: by_series for thing, by_series in _refilled(windows).by_thing.items()
                                  if selected or owns(thing)})
        self._generation += 1

    def forget_expired_windows(self, now: float) -> int:
        """Drop the windows of the things whose every datapoint is past the horizon at ``now`` (a
        device that stopped reporting); returns how many things. A window is trimmed when its
        device reports, so a device that never did again kept its last hour forever: memory that
        grew with every device ever seen. Nothing a later datapoint would find changes (it keeps
        nothing past the horizon either), so change sets built before stay valid."""
        horizon = now - self.window_horizon
        gone = [thing for thing, by_series in self._history.items()
                if all(not window or window[-1][0] <= horizon for window in by_series.values())]
        for thing in gone:
            del self._history[thing]
        return len(gone)

    def things_held(self) -> set[str]:
        """The things with an alarm state or a window held here now."""
        return {key[0] for key in self._states}.union(self._history)

    def forget_things(self, owns: Callable[[str], bool], held: HeldThings | None = None) -> None:
        """Drop the alarm states and windows of the things ``owns`` selects (a partition this
        node gave up: their next owner evaluates them, from the database); ``held`` as for
        ``load_things``."""
        self._drop(owns, held)

    def _drop(self, owns: Callable[[str], bool], held: HeldThings | None) -> None:
        if held is None:
            self._drop_things({thing for thing in self.things_held() if owns(thing)})
            return
        things = set(held.selected)
        if held.may_have_grown:
            things.update(thing for thing in self.things_held() - held.listed if owns(thing))
        self._drop_things(things)

    def _drop_things(self, things: set[str]) -> None:
        if not things:
            return
        for key in [key for key in self._states if key[0] in things]:
            del self._states[key]
        for thing in things:
            self._history.pop(thing, None)

    def alarms(self, keys: Iterable[StateKey] | None = None) -> list[tuple[StateKey, AlarmState]]:
        """The committed alarms in alarm, all of them or those among ``keys``."""
        if keys is None:
            items: Iterable[tuple[StateKey, AlarmState]] = self._states.items()
        else:
            items = ((key, state) for key in keys if (state := self._states.get(key)) is not None)
        return [(key, state) for key, state in items if state.status is AlarmStatus.IN_ALARM]

    def share_statistics(self, shared: SharedWindows) -> None:
        """Cluster mode: statistical thresholds over every detect node's devices, not only this node's."""
        self._statistics.shared = shared

    def ended_statistics(self, now: float) -> list[tuple[SeriesKey, int, dict[str, float]]]:
        """This node's values of the statistical windows ended before ``now``, each handed out once."""
        return self._statistics.ended(now)

    def remembered(self) -> int:
        """How many alarm states are held: idle ones (a compliant device) cost nothing."""
        return len(self._states)

    def changes(self) -> ChangeSet:
        """An empty change set on the current state, for one batch of evaluations."""
        return ChangeSet(self._generation)

    def apply(self, changes: ChangeSet) -> None:
        """Make a change set current: call once its events and states are durable, never otherwise."""
        if changes.generation != self._generation:
            raise StaleChanges(f"change set of state {changes.generation}, the state is {self._generation}")
        for key, state in changes.states.items():
            if state.is_idle:
                self._states.pop(key, None)
            else:
                self._states[key] = state
        for (thing, series), window in changes.windows.items():
            by_series = self._history.get(thing)
            if by_series is None:
                by_series = self._history[thing] = {}
            by_series[series] = tuple(window)
        self._statistics.apply(changes.statistics)
        self._generation += 1

    def _state(self, key: StateKey, changes: ChangeSet) -> AlarmState | None:
        state = changes.states.get(key)
        return state if state is not None else self._states.get(key)

    # -- evaluation ------------------------------------------------------------------------------
    def _measure(self, thing: str, metric: str, series: str, value: dict[str, Any], window_s: float | None,
                 now: float, changes: ChangeSet) -> tuple[dict[str, Any], list[tuple[float, float]] | None]:
        """The value a behavior compares, and the (time, value) datapoints of its window (None:
        the datapoint itself)."""
        if window_s is None or (metric not in DELTA_METRICS and metric not in MAX_METRICS):
            return value, None
        history = changes.windows.get((thing, series))
        if history is None:  # first touch in this batch: a copy of the committed window
            committed = self._history.get(thing)
            history = changes.windows[(thing, series)] = list((committed or {}).get(series) or ())
        if not history or history[-1][0] != now:
            history.append((now, scalar_of(value) or 0.0))
        horizon = self.window_horizon
        if history[0][0] <= now - horizon:
            history[:] = [(t, v) for t, v in history if t > now - horizon]
        inside = [(t, v) for t, v in history if t > now - window_s]
        if metric in MAX_METRICS:
            combined = (min if is_smallest_series(series) else max)(v for _, v in inside)
        else:
            combined = sum(v for _, v in inside)
        # Saturate: two counts near COUNT_MAX sum past it, and (as floats) COUNT_MAX itself rounds
        # up to 2**63; a count the store cannot encode failed the whole batch it was in.
        return {"count": min(int(combined), COUNT_MAX)}, inside

    def _rules_of(self, profile: Mapping[str, Any]) -> list[_Rule]:
        """The profile's behaviors prepared for evaluation, cached while the profile object lives.

        Profiles come from the monitoring snapshot, which is replaced (never mutated) when the
        control plane changes, so the object identity is a safe key; the entry keeps the object
        alive, so its id cannot be reused while cached.
        """
        cached = self._compiled.get(id(profile))
        if cached is not None and cached[0] is profile:
            return cached[1]
        if len(self._compiled) > _COMPILED_PROFILES_MAX:
            self._compiled.clear()
        rules = [_Rule.of(b, self.time_scale) for b in profile.get("behaviors") or []]
        self._compiled[id(profile)] = (profile, rules)
        return rules

    def evaluate(self, thing: str, profiles: Iterable[Mapping[str, Any]], datapoints: Mapping[str, dict[str, Any]],
                 now: float, changes: ChangeSet | None = None) -> Evaluation:
        """One report's datapoints (metric -> MetricValue) received at ``now``: its events, and what
        it changes recorded in ``changes`` (the batch's, or a new one) on top of what is there."""
        changes = self.changes() if changes is None else changes
        result = Evaluation([], changes)
        changed, committed = changes.states, self._states  # the batch's states read first
        for profile in profiles:
            profile_name = profile["name"]
            for rule in self._rules_of(profile):
                if rule.series is None:
                    continue  # no metric
                value = datapoints.get(rule.series)
                if value is None:
                    continue  # no datapoint
                key = (thing, profile_name, rule.name, rule.dimension_key)
                active: ActiveModel | None = None
                if rule.confidence is not None:
                    if AWAY_SERIES in datapoints and rule.cloud_side:
                        # A window the device spent away: its 0s are no datapoint of how it behaves,
                        # which training leaves out too (store/history.py ``as_trained``). Judged,
                        # a device that connects every 45 minutes (AWS's own example of ML Detect's
                        # minimum) would alarm between its connections on a model of them.
                        continue
                    active = self._models.get((profile_name, rule.name))
                    number = scalar_of(value)
                    if active is None or active.series != rule.series or number is None:
                        continue  # no model in force (pending, expired, retraining): no verdict either way
                    ok = not ml_violates(active, rule.confidence, thing, number, now)
                    measured, window_points, threshold, statistics = value, None, rule.threshold, None
                else:
                    if rule.window_s is None:  # most behaviors: the datapoint itself, without a call
                        measured, window_points = value, None
                    else:
                        measured, window_points = self._measure(thing, rule.metric, rule.series, value,
                                                                rule.window_s, now, changes)
                    if rule.statistical:
                        threshold, statistics = self._threshold(thing, profile_name, rule, measured, now, changes)
                        if threshold is None:
                            continue  # statistical warm-up: no verdict either way
                        check = None
                    else:
                        threshold, statistics, check = rule.threshold, None, rule.check
                    try:
                        ok = check(measured) if check is not None else compliant(rule.operator, threshold, measured)
                    except (ValueError, KeyError, TypeError):
                        continue  # a datapoint of another type than the behavior's metric: not comparable
                state = changed.get(key)
                if state is None:
                    state = committed.get(key)
                if state is None:
                    if ok:
                        continue  # the common case: a compliant device stays NORMAL, nothing to record
                    state = _IDLE
                after, transition = advance(state, not ok, measured, now, rule.to_alarm, rule.to_clear, self.new_id)
                # Idle stays idle (the common case: a compliant fleet) is not a change worth
                # storing; everything else is, so an alarm's streaks and timestamps survive restarts.
                if after is not state and after != state and not (after.is_idle and state.is_idle):
                    changed[key] = after
                if transition is not None:
                    evidence: dict[str, Any]
                    if active is not None and rule.confidence is not None:
                        evidence = ml_evidence(active, rule.confidence, rule.metric, thing, scalar_of(value) or 0.0,
                                               now)
                    else:
                        evidence = statistics if statistics is not None else {"threshold": threshold}
                    evidence["datapoints"] = (
                        [{"timestamp": t, "value": v} for t, v in transition.datapoints] if window_points is None else
                        [{"timestamp": t, "value": {"count": int(v)}} for t, v in window_points])
                    if not ok and active is None:
                        bad = offending(rule.operator, threshold, measured)
                        if bad:
                            evidence["offendingValues"] = bad
                    result.events.append(self._event(key, rule.behavior, transition, evidence))
        return result

    def _threshold(self, thing: str, profile: str, rule: _Rule, measured: dict[str, Any], now: float,
                   changes: ChangeSet) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """A statistical behavior's threshold in force now (None in warm-up), and its evidence."""
        statistic = rule.behavior["criteria"]["statisticalThreshold"].get("statistic")
        key = (profile, rule.name)
        window_s = rule.window_s
        assert window_s is not None  # statistical rules always have a window
        number = scalar_of(measured)
        resolved = self._statistics.threshold(key, statistic, window_s, now, changes.statistics)
        if number is not None:
            self._statistics.observe(key, statistic, window_s, thing, number, now, changes.statistics)
        if resolved is None:
            return None, {}
        value, population = resolved
        threshold = statistical_threshold(rule.operator, measured, value)
        return threshold, {"threshold": threshold, "statistic": statistic, "devices": population}

    def _event(self, key: StateKey, behavior: Mapping[str, Any], transition: Transition,
               evidence: dict[str, Any]) -> ViolationEvent:
        thing, profile, _, _ = key
        return ViolationEvent(
            violation_id=transition.violation_id, event_type=transition.event, thing_name=thing,
            profile_name=profile, behavior=dict(behavior), metric_value=transition.value, at=transition.at,
            criteria_type=criteria_type(behavior), suppressed=bool(behavior.get("suppressAlerts")),
            evidence=evidence, state=transition.state)

    def invalidate(self, keys: Iterable[StateKey], behaviors: Mapping[StateKey, Mapping[str, Any]], now: float,
                   reason: str, changes: ChangeSet | None = None) -> Evaluation:
        """alarm-invalidated for every alarm among ``keys``; their state is dropped (in ``changes``)."""
        changes = self.changes() if changes is None else changes
        result = Evaluation([], changes)
        for key in keys:
            state = self._state(key, changes)
            if state is None:
                continue
            after, transition = invalidate(state, now)
            changes.states[key] = after
            if transition is not None:
                result.events.append(self._event(key, behaviors.get(key) or {"name": key[2]}, transition,
                                                 {"reason": reason}))
        return result
