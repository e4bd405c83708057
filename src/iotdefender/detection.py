"""Live detection: runs the pure engine on accepted reports and keeps the violation record.

Exactly-once transitions: evaluation happens inside the ingest batch's transaction, so the
datapoints, the events, the alarm states and the alert outbox rows of a batch commit together or
not at all. The engine's state (alarm states, windows, fleet statistics) advances only after that
commit (``committed`` applies the batch's change set; a failed batch's is dropped); after a
``kill -9`` the alarm states are reloaded from the database and no transition is lost or repeated.

Invalidation (alarm-invalidated) — the choices, since AWS documents only the first:
- the device sent no datapoint for the invalidation period (2 days / time scale);
- the behavior was removed from its profile (a behavior edited in place keeps its alarm, judged
  by the new criteria from the next datapoint on);
- the profile was deleted or detached, or the thing no longer belongs to any of its targets.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import Counter
from sqlalchemy.engine import Connection, Engine

from iotdefender.alerts.outbox import AlertRouter
from iotdefender.engine.alarm import EventType, IdFactory, due_for_invalidation
from iotdefender.engine.evaluator import ChangeSet, Evaluation, Evaluator, StateKey, ViolationEvent
from iotdefender.monitoring import MonitoringIndex
from iotdefender.store import violations
from iotdefender.store.database import writing

log = structlog.get_logger("iotdefender.detection")

# CloudWatch's AWS/IoT metric names (reference §6.2); profile- and account-level series are
# sum by (SecurityProfileName) and sum(). Never labelled by thing: that would be millions of series.
_LABELS = ["SecurityProfileName", "BehaviorName"]
COUNTERS = {
    EventType.IN_ALARM: Counter("Violations", "New violations of security profile behaviors", _LABELS),
    EventType.CLEARED: Counter("ViolationsCleared", "Violations that were resolved", _LABELS),
    EventType.INVALIDATED: Counter("ViolationsInvalidated",
                                   "Violations whose information is no longer available", _LABELS),
}


def new_violation_id() -> str:
    """32 lower-case hex characters, the form AWS's violationIds take; random, so unique across restarts."""
    return uuid.uuid4().hex


@dataclass
class PendingDetection:
    changes: ChangeSet  # applied to the evaluator once the transaction committed
    events: list[ViolationEvent] = field(default_factory=list)


class DetectionService:
    def __init__(self, engine: Engine, monitoring: MonitoringIndex, alerts: AlertRouter,
                 invalidation_period: float, time_scale: float = 1.0, new_id: IdFactory = new_violation_id) -> None:
        self._engine = engine
        self._monitoring = monitoring
        self._alerts = alerts
        self._invalidation_period = invalidation_period
        self._lock = threading.Lock()  # one evaluation at a time: ingest batches and sweeps
        self.evaluator = Evaluator(new_id, time_scale)
        self.listeners: list[Callable[[list[ViolationEvent]], None]] = []

    def load(self) -> None:
        with self._engine.connect() as conn:
            self.evaluator.load(violations.load_alarm_states(conn))

    # -- live evaluation, called from the ingest writer inside its transaction -----------------
    def evaluate_in(self, conn: Connection, reports: Iterable[tuple[str, Mapping[str, dict[str, Any]], float]]
                    ) -> PendingDetection:
        self._lock.acquire()
        pending = PendingDetection(self.evaluator.changes())
        try:
            for thing, datapoints, at in reports:
                evaluation = self.evaluator.evaluate(thing, self._monitoring.profiles_for(thing), datapoints, at,
                                                     pending.changes)
                self._collect(pending, evaluation)
            self._persist(conn, pending)
        except BaseException:
            self._lock.release()
            raise
        return pending

    def committed(self, pending: PendingDetection | None, ok: bool) -> None:
        """After the ingest transaction: advance memory on success, release the lock always."""
        try:
            if ok and pending is not None:
                self._after_commit(pending)
        except Exception:
            # The transaction is durable: a failure here must not make the batch look failed.
            log.exception("after_commit_failed")
        finally:
            if pending is not None:
                self._lock.release()

    @staticmethod
    def _collect(pending: PendingDetection, evaluation: Evaluation) -> None:
        pending.events.extend(evaluation.events)

    def _persist(self, conn: Connection, pending: PendingDetection) -> None:
        violations.record_events(conn, pending.events)
        violations.save_alarm_states(conn, pending.changes.states)
        self._alerts.enqueue(conn, pending.events, self._monitoring)

    def _after_commit(self, pending: PendingDetection) -> None:
        self.evaluator.apply(pending.changes)
        for event in pending.events:
            COUNTERS[event.event_type].labels(event.profile_name, event.behavior.get("name", "")).inc()
            log.info("violation_event", event_type=event.event_type.value, violation_id=event.violation_id,
                     thing=event.thing_name, profile=event.profile_name, behavior=event.behavior.get("name"))
        if pending.events:
            for listener in self.listeners:
                listener(pending.events)
            self._alerts.wake()

    # -- invalidation sweeps ----------------------------------------------------------------------
    def sweep(self, now: float) -> PendingDetection | None:
        """Invalidate alarms whose device went silent or that nothing monitors any more; returns
        what was stored (None when nothing was due)."""
        with self._lock:
            stale: dict[StateKey, str] = {}
            behaviors: dict[StateKey, Mapping[str, Any]] = {}
            for key, state in self.evaluator.alarms():
                thing, profile_name, behavior_name, _ = key
                current = {p["name"]: p for p in self._monitoring.profiles_for(thing)}
                profile = current.get(profile_name)
                behavior = next((b for b in (profile or {}).get("behaviors") or []
                                 if b.get("name") == behavior_name), None)
                if profile is None:
                    stale[key] = "the security profile no longer monitors this thing"
                elif behavior is None:
                    stale[key] = "the behavior was removed from the security profile"
                elif due_for_invalidation(state, now, self._invalidation_period):
                    stale[key] = "no datapoint for the invalidation period"
                if behavior is not None:
                    behaviors[key] = behavior
            if not stale:
                return None
            pending = PendingDetection(self.evaluator.changes())
            for reason in set(stale.values()):
                keys = [k for k, r in stale.items() if r == reason]
                self._collect(pending, self.evaluator.invalidate(keys, behaviors, now, reason, pending.changes))
            self._fill_behaviors(pending)
            with writing(self._engine) as conn:
                self._persist(conn, pending)
            self._after_commit(pending)
            return pending

    def _fill_behaviors(self, pending: PendingDetection) -> None:
        """Events of removed behaviors carry the behavior as it was when the alarm was raised."""
        with self._engine.connect() as conn:
            filled = []
            for event in pending.events:
                if "metric" not in event.behavior:
                    original = violations.events_of(conn, event.violation_id)
                    if original:
                        event = ViolationEvent(**{**event.__dict__, "behavior": original[0].behavior,
                                                  "criteria_type": original[0].criteria_type,
                                                  "suppressed": original[0].suppressed})
                filled.append(event)
            pending.events[:] = filled
