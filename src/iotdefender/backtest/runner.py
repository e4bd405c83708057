"""Backtest: replay retained history through the engine and report what a behavior would have done.

Two paths, one semantics (the alarm state machine of ``engine.alarm``, the windows of
``engine.evaluator``):
- numeric static behaviors (a count or number compared with a fixed value, optionally summed over
  ``durationSeconds``) run over the columnar segments with ``engine.vectorised``: a week of a 10k
  fleet in seconds, and a threshold sweep costs one more comparison per threshold;
- every other behavior (statistical thresholds, port/CIDR/string/number sets, window maxima, ML
  Detect) is replayed report by report through ``engine.evaluator.Evaluator``, the code live
  evaluation runs. An ML behavior of a saved profile is replayed with the stored model version that
  was active at each moment (``ModelTimeline``): no verdict before its first model was built.

Stored history is read as live evaluation has it today (``history.read_as_evaluated``): the 0s that
releases before the smallest message was kept stored for idle windows of ``aws:message-byte-size``
are no datapoints (docs/cloud-metrics.md).

What a backtest assumes, stated in every result: every replayed alarm starts NORMAL at ``start``;
things are covered by the targets as they are now (the registry keeps no membership history); an
alarm of a device that goes silent is invalidated ``invalidation period`` after its last datapoint,
as the live sweep does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import numpy as np
from sqlalchemy.engine import Connection, Engine

from iotdefender.engine.alarm import AlarmStatus, EventType, counting_ids, due_for_invalidation
from iotdefender.engine.compare import scalar_of
from iotdefender.engine.evaluator import DELTA_METRICS, MAX_METRICS, Evaluator, StateKey, criteria_type
from iotdefender.engine.ml import BehaviorModel
from iotdefender.engine.ml_behavior import ActiveModel, MlModels, additional_info, confidence_of
from iotdefender.engine.series import behavior_series
from iotdefender.engine.vectorised import (alarm_transitions, alarms_raised, order_by_thing_and_time, supports,
                                           violating, windowed_sums)
from iotdefender.store import history, ml_models
from iotdefender.store.database import long_statements

T = TypeVar("T")

Progress = Callable[[float, str], None]
BACKTEST_PROFILE = "backtest"
SAMPLE_EVENTS = 200
TOP_THINGS = 20
SWEEP_PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9)


@dataclass(frozen=True)
class BacktestRequest:
    behaviors: list[dict[str, Any]]
    start: float
    end: float
    covers: Callable[[str], bool]  # is this thing monitored by the profile's targets?
    profile_name: str = BACKTEST_PROFILE
    # Thresholds to try per behavior name; a behavior without an entry tries percentiles of its values.
    sweeps: Mapping[str, list[float]] = field(default_factory=dict)
    time_scale: float = 1.0
    invalidation_period: float = 2 * 86400.0


@dataclass
class BehaviorOutcome:
    """What one behavior would have done over the range."""

    behavior: dict[str, Any]
    method: str
    datapoints: int = 0
    devices: set[str] = field(default_factory=set)
    events: list[tuple[str, float, str, Any]] = field(default_factory=list)  # (thing, time, type, value)
    active_at_end: set[str] = field(default_factory=set)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None

    def summary(self, start: float, end: float, buckets: int = 48) -> dict[str, Any]:
        alarms = [e for e in self.events if e[2] == EventType.IN_ALARM.value]
        per_thing = Counter(e[0] for e in alarms)
        first: dict[str, float] = {}
        for thing, at, _, _ in alarms:
            first.setdefault(thing, at)
        width = max((end - start) / buckets, 1e-9)
        timeline = np.zeros(buckets, dtype=np.int64)
        if alarms:
            slots = np.minimum(((np.array([a[1] for a in alarms]) - start) / width).astype(np.int64), buckets - 1)
            np.add.at(timeline, np.maximum(slots, 0), 1)
        kinds = Counter(e[2] for e in self.events)
        out: dict[str, Any] = {
            "behaviorName": self.behavior.get("name"),
            "behavior": self.behavior,
            "method": self.method,
            "datapoints": self.datapoints,
            "devicesEvaluated": len(self.devices),
            "devicesInAlarm": len(per_thing),
            "alarms": kinds.get(EventType.IN_ALARM.value, 0),
            "cleared": kinds.get(EventType.CLEARED.value, 0),
            "invalidated": kinds.get(EventType.INVALIDATED.value, 0),
            "activeAtEnd": len(self.active_at_end),
            "firstAlarm": min(first.values()) if first else None,
            "timeline": [[start + i * width, int(c)] for i, c in enumerate(timeline)],
            "topThings": [{"thingName": t, "alarms": c, "firstAlarm": first[t]}
                          for t, c in per_thing.most_common(TOP_THINGS)],
            "events": [self._event(t, at, k, v)
                       for t, at, k, v in sorted(self.events, key=lambda e: (e[1], e[0]))[:SAMPLE_EVENTS]],
            "sweep": self.sweep,
        }
        if self.note:
            out["note"] = self.note
        return out


    def _event(self, thing: str, at: float, kind: str, value: Any) -> dict[str, Any]:
        """One replayed event with ListViolationEvents' fields for it, the ML confidence level included."""
        event = {"thingName": thing, "violationEventType": kind, "violationEventTime": at, "metricValue": value}
        info = additional_info(self.behavior)
        if info is not None:
            event["violationEventAdditionalInfo"] = info
        return event


def _series_of(behavior: Mapping[str, Any]) -> str:
    series = behavior_series(behavior)
    assert series is not None  # behaviors without a metric are skipped before
    return series


def fast_path_threshold(behavior: Mapping[str, Any]) -> float | None:
    """The numeric threshold when the vectorised path computes exactly what the engine would."""
    criteria = behavior.get("criteria") or {}
    if criteria.get("statisticalThreshold") or criteria.get("mlDetectionConfig"):
        return None
    if not supports(criteria.get("comparisonOperator")) or not isinstance(criteria.get("value"), dict):
        return None
    metric = behavior.get("metric")
    if criteria.get("durationSeconds") is not None and metric in MAX_METRICS:
        return None  # the maximum over a window: the per-datapoint engine
    return scalar_of(criteria["value"])


def _measured(points: history.SeriesPoints, behavior: Mapping[str, Any], time_scale: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = order_by_thing_and_time(points.thing_index, points.times)
    things, times, values = points.thing_index[order], points.times[order], points.values[order]
    duration = (behavior.get("criteria") or {}).get("durationSeconds")
    if duration is not None and behavior.get("metric") in DELTA_METRICS:
        values = windowed_sums(things, times, values, float(duration) / time_scale)
    return things, times, values


def _vectorised(request: BacktestRequest, behavior: dict[str, Any], points: history.SeriesPoints,
                threshold: float) -> BehaviorOutcome:
    outcome = BehaviorOutcome(behavior, "vectorised")
    covered = np.fromiter((request.covers(t) for t in points.things), dtype=bool, count=len(points.things))
    if len(points) and not covered.all():
        keep = covered[points.thing_index]
        points = history.SeriesPoints(points.things, points.thing_index[keep], points.times[keep],
                                      points.values[keep])
    criteria = behavior["criteria"]
    operator = criteria["comparisonOperator"]
    things, times, measured = _measured(points, behavior, request.time_scale)
    outcome.datapoints = len(times)
    outcome.devices = {points.things[i] for i in np.unique(things)}
    kind = "count" if "count" in criteria["value"] else "number"

    to_alarm = criteria.get("consecutiveDatapointsToAlarm") or 1
    to_clear = criteria.get("consecutiveDatapointsToClear") or 1
    result = alarm_transitions(things, times, measured, violating(operator, measured, threshold), to_alarm, to_clear,
                               request.invalidation_period, request.end)
    outcome.events = [(points.things[t], at, k.value, {kind: _plain(v)})
                      for t, at, k, v in zip(result.thing_index.tolist(), result.times.tolist(), result.kinds,
                                             result.values.tolist())]
    outcome.active_at_end = {points.things[t] for t in result.still_in_alarm.tolist()}
    candidates = request.sweeps.get(behavior["name"])
    if candidates is None and len(measured):
        # Percentiles of what the devices did, rounded as an operator would write a threshold.
        found = np.percentile(measured, SWEEP_PERCENTILES).tolist()
        candidates = [round(v) if kind == "count" else float(f"{v:.4g}") for v in found]
    for limit in sorted(set([threshold, *(candidates or [])])):
        if limit == threshold:
            raised = result.thing_index[[k is EventType.IN_ALARM for k in result.kinds]] if len(result) else \
                result.thing_index
        else:
            raised = alarms_raised(things, times, measured, violating(operator, measured, limit), to_alarm, to_clear,
                                   request.invalidation_period, request.end)
        outcome.sweep.append({"threshold": {kind: _plain(limit)}, "current": limit == threshold,
                              "devicesInAlarm": int(len(np.unique(raised))), "alarms": int(len(raised))})
    return outcome


def _plain(number: float) -> int | float:
    return int(number) if float(number).is_integer() else float(number)


class ModelTimeline:
    """The ML models of a replay as time advances: for each behavior, its stored versions by the
    time they were built; ``advance(t)`` gives the models active at ``t`` when they changed."""

    def __init__(self, versions: Mapping[tuple[str, str], list[tuple[float, ActiveModel]]]) -> None:
        self._versions = {key: sorted(found, key=lambda v: v[0]) for key, found in versions.items() if found}
        self._next = {key: 0 for key in self._versions}
        self._current: dict[tuple[str, str], ActiveModel] = {}

    def advance(self, at: float) -> MlModels | None:
        changed = False
        for key, found in self._versions.items():
            i = self._next[key]
            while i < len(found) and found[i][0] <= at:
                self._current[key] = found[i][1]
                i += 1
                changed = True
            self._next[key] = i
        return dict(self._current) if changed else None

    @staticmethod
    def load(engine: Engine, profile: str, behaviors: Iterable[Mapping[str, Any]], end: float) -> ModelTimeline:
        found: dict[tuple[str, str], list[tuple[float, ActiveModel]]] = {}
        with engine.connect() as conn:
            for behavior in behaviors:
                key = (profile, behavior.get("name", ""))
                found[key] = [(v.trained_at, ActiveModel(v.series, v.version, BehaviorModel.from_bytes(v.model)))
                              for v in ml_models.versions_of(conn, key, end) if v.series == behavior_series(behavior)]
        return ModelTimeline(found)

    def versions(self, key: tuple[str, str]) -> list[tuple[float, ActiveModel]]:
        return self._versions.get(key, [])


def _between_reads(conn: Connection, batches: Iterator[T]) -> Iterator[T]:
    """``batches``, each handed on after its read transaction ended: replaying one takes seconds,
    and PostgreSQL ends a session left idle inside a transaction (store/database.py)."""
    for batch in batches:
        conn.commit()
        yield batch


def _replayed(request: BacktestRequest, behaviors: list[dict[str, Any]], reports: Iterable[list[tuple]],
              total: int, progress: Progress, models: ModelTimeline | None = None) -> list[BehaviorOutcome]:
    """The per-datapoint engine over reports in time order, with the live sweep's invalidation
    (and the ML models active at each moment)."""
    evaluator = Evaluator(counting_ids(), request.time_scale)  # a backtest's violation ids are never shown
    profile = {"name": request.profile_name, "behaviors": behaviors}
    outcomes = {b["name"]: BehaviorOutcome(b, "engine") for b in behaviors}
    series = {b["name"]: _series_of(b) for b in behaviors}
    sizes = set(series.values())  # report_as_evaluated drops an older release's idle 0s of those it reads
    in_alarm: dict[str, set[StateKey]] = {}
    covered: dict[str, bool] = {}
    done = 0
    for batch in reports:
        for thing, at, datapoints in batch:
            ok = covered.get(thing)
            if ok is None:
                ok = covered[thing] = request.covers(thing)
            if not ok:
                continue
            datapoints = history.report_as_evaluated(datapoints, sizes)
            _invalidate_silent(evaluator, in_alarm.get(thing), at, outcomes, request.invalidation_period)
            if models is not None and (current := models.advance(at)) is not None:
                evaluator.use_models(current)
            for name, series_key in series.items():
                if series_key in datapoints:
                    outcomes[name].datapoints += 1
                    outcomes[name].devices.add(thing)
            evaluation = evaluator.evaluate(thing, (profile,), datapoints, at)
            evaluator.apply(evaluation.changes)
            for state_key, state in evaluation.changes.states.items():
                alarms = in_alarm.setdefault(thing, set())
                (alarms.add if state.status is AlarmStatus.IN_ALARM else alarms.discard)(state_key)
            for event in evaluation.events:
                outcomes[event.behavior["name"]].events.append(
                    (thing, event.at, event.event_type.value, event.metric_value))
        done += len(batch)
        progress(done / total if total else 1.0, f"{done} of {total} reports")
    for thing, keys in in_alarm.items():
        _invalidate_silent(evaluator, keys, request.end, outcomes, request.invalidation_period)
        for state_key in keys:
            outcomes[state_key[2]].active_at_end.add(thing)
    return list(outcomes.values())


def _invalidate_silent(evaluator: Evaluator, keys: set[StateKey] | None, now: float,
                       outcomes: Mapping[str, BehaviorOutcome], period: float) -> None:
    """What the live sweep would have done by ``now`` to these alarms: invalidated those whose device
    went silent, one period after its last datapoint."""
    if not keys:
        return
    for key, state in evaluator.alarms(list(keys)):
        if not due_for_invalidation(state, now, period):
            continue
        at = (state.last_datapoint_at or 0.0) + period
        result = evaluator.invalidate([key], {}, at, "backtest")
        evaluator.apply(result.changes)
        keys.discard(key)
        for event in result.events:
            outcomes[key[2]].events.append((key[0], at, event.event_type.value, event.metric_value))


def _model_note(versions: list[tuple[float, ActiveModel]]) -> str:
    if not versions:
        return ("no model of this behavior was built before the end of the range: ML Detect behaviors are "
                "replayed with the models their saved profile's training built, so nothing was judged")
    return (f"replayed with model versions {versions[0][1].version} to {versions[-1][1].version}, each from the "
            f"time it was built; no verdict before {_utc(versions[0][0])} (the first model)")


def _utc(epoch: float) -> str:
    """An instant as people read it in a note: ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@long_statements()  # reads of the whole period, one statement each
def run_backtest(engine: Engine, request: BacktestRequest, progress: Progress = lambda f, m: None
                 ) -> dict[str, Any]:
    """Replay [start, end] for every behavior of the request; returns the result document."""
    fast: list[tuple[dict[str, Any], float]] = []
    slow: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for behavior in request.behaviors:
        if not behavior.get("metric"):
            skipped.append(behavior)  # metric-less behaviors have nothing to replay
            continue
        threshold = fast_path_threshold(behavior)
        if threshold is None:
            slow.append(behavior)
        else:
            fast.append((behavior, threshold))
    ml = [b for b in slow if confidence_of(b) is not None]
    timeline = ModelTimeline.load(engine, request.profile_name, ml, request.end) if ml else None
    steps = len(fast) + (1 if slow else 0)
    outcomes: list[BehaviorOutcome] = []
    with engine.connect() as conn:
        for i, (behavior, threshold) in enumerate(fast):
            progress(i / max(steps, 1), f"reading {_series_of(behavior)}")
            fetched = history.fetch_as_evaluated(conn, _series_of(behavior), request.start, request.end)
            conn.commit()  # decoded and evaluated with no transaction open (idle ones are bounded: store/database.py)
            points = history.as_evaluated(fetched, _series_of(behavior))
            progress((i + 0.5) / max(steps, 1), f"evaluating {behavior['name']} over {len(points)} datapoints")
            outcomes.append(_vectorised(request, behavior, points, threshold))
        if slow:
            total = history.count_reports(conn, request.start, request.end)
            base = len(fast) / max(steps, 1)
            reports = _between_reads(conn, history.iter_reports(conn, request.start, request.end))
            outcomes.extend(_replayed(request, slow, reports, total,
                                      lambda f, m: progress(base + f / max(steps, 1), m), timeline))
    by_name = {o.behavior["name"]: o for o in outcomes}
    results = []
    for behavior in request.behaviors:
        outcome = by_name.get(behavior.get("name"))
        if outcome is None:
            outcome = BehaviorOutcome(behavior, "none", note="a behavior without a metric has nothing to replay")
        elif timeline is not None and confidence_of(behavior) is not None:
            outcome.note = _model_note(timeline.versions((request.profile_name, behavior.get("name", ""))))
        if outcome.datapoints == 0:
            outcome.note = ("no retained datapoints of this metric in the range: only metrics used by a "
                            "behavior or listed in additionalMetricsToRetainV2 of a monitoring profile are kept")
        results.append(outcome.summary(request.start, request.end))
    progress(1.0, "done")
    return {
        "securityProfileName": request.profile_name,
        "startTime": request.start,
        "endTime": request.end,
        "devicesEvaluated": len(set().union(*(o.devices for o in outcomes))) if outcomes else 0,
        "behaviors": results,
        "assumptions": [
            "alarms start NORMAL at startTime",
            "things are covered by the profile's targets as they are now",
            "an alarm of a silent device is invalidated one invalidation period after its last datapoint",
        ],
        "criteriaTypes": sorted({criteria_type(b) for b in request.behaviors}),
    }
