"""Live detection: runs the pure engine on accepted reports and keeps the violation record.

Exactly-once transitions: evaluation happens inside the ingest batch's transaction, so the
datapoints, the events, the alarm states and the alert outbox rows of a batch commit together or
not at all. The engine's state (alarm states, windows, fleet statistics) advances only after that
commit (``transaction`` applies the batch's change set; a failed batch's is dropped); after a
``kill -9`` the alarm states are reloaded from the database and no transition is lost or repeated.

A commit whose answer never comes back (the connection to PostgreSQL drops while COMMIT is on
its way: the server may or may not have committed) is *unconfirmed*. Its change set is kept, and
before the next transaction or sweep the database is asked which it was, on PostgreSQL once the
session the COMMIT was sent on has ended (a server that was frozen commits what it had received
when it runs again, possibly after the asking). The transaction's own check (``CommitCheck``: the
batch store asks whether its report states are there) decides between applying the change set
and dropping it; without a check the alarm states are reloaded. Either
way memory matches the database again before anything else is evaluated, so the device's resend
of a report answered ``ServiceUnavailable`` is never judged from an alarm state that is behind
the stored events (which duplicated its transition once under load).

The windows of ``durationSeconds`` (a device-side sum of bytes, a cloud-side sum of windows) are
refilled from the retained datapoints of the trailing hour whenever alarm states are loaded (the
service's or the detection worker's start, a cluster node taking partitions over): the series a
monitoring profile evaluates are always retained, so a window that spans a restart sums exactly
what it would have without one, and what a backtest over the same range computes.

Invalidation (alarm-invalidated) — the choices, since AWS documents only the first:
- the device sent no datapoint for the invalidation period (2 days / time scale);
- the behavior was removed from its profile (a behavior edited in place keeps its alarm, judged
  by the new criteria from the next datapoint on);
- the profile was deleted or detached, or the thing no longer belongs to any of its targets;
- an ML behavior's model is no longer active (expired, or training started over because the
  behavior's metric or the profile's targets changed): its alarms cannot clear any more.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import structlog
from sqlalchemy.engine import Connection, Engine

from iotdefender.alerts.routes import Alert, AlertRoutes, alert_target
from iotdefender.cluster.partitions import partition_of
from iotdefender.engine.alarm import AlarmState, EventType, IdFactory, due_for_invalidation
from iotdefender.engine.evaluator import (ChangeSet, Evaluation, Evaluator, HeldThings, RefilledWindows, StateKey,
                                         ViolationEvent, dimension_key_of, refilled_series)
from iotdefender.engine.ml_behavior import confidence_of
from iotdefender.pipeline.ml_registry import ModelRegistry
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.store import history, violations
from iotdefender.store.availability import StoreUnavailable
from iotdefender.store.partition_selection import PartitionSelection, once_per_thing
from iotdefender.store.database import (Session, end_session, long_statements, session_of, write_connection,
                                        writing)

log = structlog.get_logger("iotdefender.detection")
T = TypeVar("T")


# Asked, in a later transaction, whether an unconfirmed transaction's writes are in the database.
CommitCheck = Callable[[Connection], bool]


def new_violation_id() -> str:
    """32 lower-case hex characters, the form AWS's violationIds take; random, so unique across restarts."""
    return uuid.uuid4().hex


@dataclass
class PendingDetection:
    changes: ChangeSet  # applied to the evaluator once the transaction committed
    events: list[ViolationEvent] = field(default_factory=list)
    # profile name -> its SNS alert target, from the profile the events were evaluated with
    alert_targets: dict[str, str | None] = field(default_factory=dict)

    def note_targets(self, events: Iterable[ViolationEvent],
                     profile_of: Callable[[str], Mapping[str, Any] | None]) -> None:
        for event in events:
            if event.profile_name not in self.alert_targets:
                self.alert_targets[event.profile_name] = alert_target(profile_of(event.profile_name))

    def alerts(self) -> list[Alert]:
        return [Alert(event, target) for event in self.events
                if (target := self.alert_targets.get(event.profile_name)) is not None]


class DetectionTransaction:
    """Detection's share of one batch transaction; exists only while the detection lock is held."""

    def __init__(self, service: DetectionService, conn: Connection, settled: list[ViolationEvent]) -> None:
        self._service = service
        self.conn = conn  # the write transaction: the caller's rows join it
        self.pending = PendingDetection(service.evaluator.changes())
        self.settled = settled  # events of an unconfirmed earlier transaction found committed
        # How to tell, should this transaction's commit go unanswered, whether it happened.
        self.commit_check: CommitCheck | None = None
        self.commit_unconfirmed = False  # set when the commit was sent and its answer lost
        # The thing's partition, kept with its rows (``DetectionService.partition_of``), once per
        # thing for the whole transaction: its report rows and its alarm states ask for it.
        self.partition_of = once_per_thing(service.partition_of)

    def evaluate_in(self, reports: Iterable[tuple[str, Mapping[str, dict[str, Any]], float]]) -> None:
        """Evaluate the reports; their events, alarm states and alert rows join the transaction."""
        self._service._evaluate_in(self.conn, reports, self.pending, self.partition_of)

    @property
    def events(self) -> list[ViolationEvent]:
        return self.pending.events


@dataclass
class _Unconfirmed:
    """A transaction whose COMMIT was sent and never answered."""

    pending: PendingDetection
    check: CommitCheck | None
    session: Session | None  # the server's session it was sent on, ended before the check (store.database.end_session)


class DetectionService:
    def __init__(self, engine: Engine, monitoring: MonitoringIndex, alerts: AlertRoutes,
                 invalidation_period: float, time_scale: float = 1.0, new_id: IdFactory = new_violation_id,
                 models: ModelRegistry | None = None, clock: Callable[[], float] = time.time,
                 partition_of: Callable[[str], int] = partition_of) -> None:
        self._engine = engine
        # Kept with each alarm state, so a detect node taking partitions over reads only theirs;
        # the cluster's function (the single box's states are then ready for a cluster too).
        self.partition_of = partition_of
        self._clock = clock
        self._models = models if models is not None else ModelRegistry()
        self._models_stale = True  # the ML models are (re)loaded before the next evaluation
        self._monitoring = monitoring
        self._alerts = alerts
        self._invalidation_period = invalidation_period
        self._lock = threading.Lock()  # one evaluation at a time: ingest batches and sweeps
        self.evaluator = Evaluator(new_id, time_scale)
        self._unconfirmed: _Unconfirmed | None = None
        self._windows_pruned_at = float("-inf")  # the last sweep that dropped silent devices' windows
        # violation id -> the metric its alarm was raised on (None: not known), for the alarms in
        # alarm: noted from their in-alarm events, else read from them by the next sweep.
        self._raised_on: dict[str, str | None] = {}

    def load(self) -> None:
        started = time.perf_counter()
        states, windows = self._read_stored(None)
        self.evaluator.load(states, windows)
        log.info("detection_loaded", alarm_states=self.evaluator.remembered(), windows_of_things=len(windows.by_thing),
                 seconds=round(time.perf_counter() - started, 3))
        with self._lock:
            self._refresh_models()

    def _read_stored(self, owns: PartitionSelection | None) -> tuple[dict[StateKey, AlarmState], RefilledWindows]:
        """The alarm states and windows of every thing, or of the things of the partitions ``owns``
        selects, from the database: the statements back to back, the decoding once the read's
        transaction has ended (``history.Fetched``). Decoded in between, a partition's share of a
        large fleet left the transaction idle past PostgreSQL's 30 s, which ended the session."""
        with self._engine.connect() as conn:
            fetched = self._fetch_windows(conn, owns)
            rows = violations.fetch_alarm_states(conn, owns)
        # The windows in the evaluator's form here, before any lock.
        return violations.alarm_states_of(rows, owns), self._stored_windows(fetched)

    def _fetch_windows(self, conn: Connection, owns: PartitionSelection | None) -> history.Fetched | None:
        """The statements of ``_stored_windows``: the trailing hour of every series some profile
        sums over ``durationSeconds`` (of the things of the partitions ``owns`` selects); None when
        no profile has such a behavior."""
        wanted = self.evaluator.windowed_series(self._monitoring.all_profiles())
        if not wanted:
            return None
        now = self._clock()
        with long_statements():  # an hour of the fleet's datapoints: not bounded by --database-timeout
            return history.fetch_many(conn, wanted, now - self.evaluator.window_horizon, now, owns)

    def _stored_windows(self, fetched: history.Fetched | None) -> RefilledWindows:
        """The retained datapoints fetched, by thing and series, for things a profile with such a
        behavior monitors: what the evaluator's windows held before the restart, in its form
        (``refilled_series``)."""
        if fetched is None:
            return RefilledWindows({})
        by_thing: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {}
        for series, points in fetched.decoded().items():
            for thing, window in refilled_series(points.things, points.thing_index, points.times,
                                                 points.values).items():
                by_thing.setdefault(thing, {})[series] = window
        if not by_thing:
            return RefilledWindows(by_thing)
        # Only the series a thing's own profiles sum (another profile may merely retain them).
        self._monitoring.prime(list(by_thing))
        used: dict[tuple[str, ...], set[str]] = {}
        windows: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {}
        for thing, by_series in by_thing.items():
            monitors = self._monitoring.profiles_for(thing)
            names = tuple(profile["name"] for profile in monitors)
            summed = used.get(names)
            if summed is None:
                summed = used[names] = self.evaluator.windowed_series(monitors)
            kept = {series: points for series, points in by_series.items() if series in summed}
            if kept:
                windows[thing] = kept
        return RefilledWindows(windows)

    # -- ML Detect's models -----------------------------------------------------------------------
    def invalidate_models(self) -> None:
        """Training published (or the control plane changed): reload the active models before
        the next batch or sweep."""
        self._models_stale = True

    def _refresh_models(self) -> None:
        """Under the detection lock: a batch is evaluated with one set of models throughout."""
        if not self._models_stale:
            return
        self._models_stale = False  # first: an invalidation during the read marks it stale again
        try:
            with self._engine.connect() as conn:
                self.evaluator.use_models(self._models.load(conn))
        except BaseException:
            self._models_stale = True
            raise

    # -- a share of the things (cluster mode: a partition), taken over and given up ---------------
    def take_over(self, claim: Callable[[Connection], Collection[int]]) -> list[ViolationEvent]:
        """Run ``claim`` in a write transaction of its own (cluster mode: claim partitions' fences;
        it returns the partitions it claimed), then load the alarm states and windows of those
        partitions' things, leaving the others'.

        The load comes after ``claim`` committed, so it sees whatever a previous owner committed
        before the claim fenced it. It reads only those partitions' rows (store/partition_selection.py)
        and reads them *outside* the detection lock: the node's other partitions go on being
        evaluated meanwhile (a takeover read grows with the partitions taken, tens of seconds at a
        large fleet's share, and held every partition's batches while it ran). Nothing of these
        things is evaluated here in between: their partitions' readers start after this returns,
        and a batch of an older token is fenced by the claim. Only an unconfirmed commit of this
        node may have written their states (a partition taken back): it is settled under the lock
        first, and the read done again there. So which held things are theirs (stale, to be
        replaced) is found outside the lock as well, from a list of the things held taken at the
        claim; if settling ran, the things it added are asked about under the lock. Returns the
        events that settling found committed, for the caller's listener.
        """
        with self._lock:
            with writing(self._engine) as conn:
                claimed = claim(conn)
            held = self.evaluator.things_held()
        selection = PartitionSelection(frozenset(claimed), self.partition_of)
        started = time.perf_counter()
        # What this node still holds of them (a partition taken back), found outside the lock too.
        stale = HeldThings.sorted_by(held, selection, may_have_grown=False)
        states, windows = self._read_stored(selection)
        read_s = time.perf_counter() - started
        with self._lock:
            with self._engine.connect() as conn, conn.begin():
                unsettled = self._unconfirmed is not None
                settled = self._settle(conn)
            if unsettled:  # settling may have added states of theirs: read, and look at what it added, again
                states, windows = self._read_stored(selection)
                stale = replace(stale, may_have_grown=True)
            self.evaluator.load_things(selection, states, windows, held=stale, selected=True)
            log.info("things_taken_over", partitions=len(selection.partitions), alarm_states=len(states),
                     windows_of_things=len(windows.by_thing), read_s=round(read_s, 3), read_again=unsettled,
                     remembered=self.evaluator.remembered())
            return settled

    def rewrite(self, step: Callable[[Connection], T]) -> T:
        """Run ``step`` in a write transaction of its own, between two batches (the detection lock),
        keeping every state in memory (cluster mode: move partitions' fences to the tokens of
        leases re-created after a NATS election, when nobody else committed for them meanwhile)."""
        with self._lock:
            with writing(self._engine) as conn:
                return step(conn)

    def ended_statistics(self, now: float) -> list[tuple[tuple[str, str], int, dict[str, float]]]:
        """This node's values of the statistical windows that ended (cluster mode shares them with
        the other detect nodes); under the detection lock, between two batches."""
        with self._lock:
            return self.evaluator.ended_statistics(now)

    def give_up(self, owns: Callable[[str], bool]) -> None:
        """Forget the alarm states and windows of the things ``owns`` selects (their next owner
        loads them from the database); under the detection lock, between two batches.

        Which held things are theirs is found outside the lock, from a list taken under it, as for
        a takeover (``HeldThings``). What was added in between is asked about under the lock: the
        partitions' readers have stopped, but a batch of theirs may still be in a group commit,
        and a commit may be settled."""
        with self._lock:
            listed = self.evaluator.things_held()
        theirs = HeldThings.sorted_by(listed, owns)
        with self._lock:
            self.evaluator.forget_things(owns, theirs)

    # -- live evaluation, inside the caller's transaction -----------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[DetectionTransaction]:
        """A write transaction that detection takes part in, under the detection lock::

            with detection.transaction() as run:
                ...  # the batch's own rows, on run.conn
                run.evaluate_in(reports)

        The block's end commits. Memory (the alarm states) advances only after the commit; an
        exception in the block rolls back and leaves memory alone; a commit that fails leaves
        the transaction unconfirmed (module docstring), settled at the start of the next one.
        """
        with self._lock:
            self._refresh_models()
            with self._transaction() as run:
                yield run

    @contextmanager
    def _transaction(self) -> Iterator[DetectionTransaction]:
        """``transaction`` for a caller that holds the lock already."""
        committing = False
        try:
            with write_connection(self._engine) as conn, conn.begin():
                session = session_of(conn)
                settled = self._settle(conn)
                run = DetectionTransaction(self, conn, settled)
                yield run
                committing = True  # what raises from here on is the COMMIT
        except BaseException:
            if committing:
                run.commit_unconfirmed = True
                self._unconfirmed = _Unconfirmed(run.pending, run.commit_check, session)
            raise
        self._after_commit(run.pending)

    def _settle(self, conn: Connection) -> list[ViolationEvent]:
        """Make memory match the database after an unconfirmed commit; the events it turns out
        to have stored (their alerts are in the outbox with them)."""
        unconfirmed, self._unconfirmed = self._unconfirmed, None
        if unconfirmed is None:
            return []
        try:
            if unconfirmed.session is not None and not end_session(conn, unconfirmed.session):
                raise StoreUnavailable("the session of an unconfirmed commit has not ended yet")
            if unconfirmed.check is None:
                self.evaluator.load(violations.load_alarm_states(conn))
                log.warning("unconfirmed_commit_settled", outcome="alarm states reloaded")
                return []
            if unconfirmed.check(conn):
                self._after_commit(unconfirmed.pending)
                log.warning("unconfirmed_commit_settled", outcome="committed",
                            events=len(unconfirmed.pending.events))
                return unconfirmed.pending.events
            log.warning("unconfirmed_commit_settled", outcome="not committed")
            return []
        except BaseException:
            self._unconfirmed = unconfirmed  # still unknown: the database is still away
            raise

    def _evaluate_in(self, conn: Connection, reports: Iterable[tuple[str, Mapping[str, dict[str, Any]], float]],
                     pending: PendingDetection, partition_of: Callable[[str], int]) -> None:
        for thing, datapoints, at in reports:
            profiles = self._monitoring.profiles_for(thing)
            evaluation = self.evaluator.evaluate(thing, profiles, datapoints, at, pending.changes)
            self._collect(pending, evaluation)
            if evaluation.events:
                by_name = {p["name"]: p for p in profiles}
                pending.note_targets(evaluation.events, by_name.get)
        self._persist(conn, pending, partition_of)

    @staticmethod
    def _collect(pending: PendingDetection, evaluation: Evaluation) -> None:
        pending.events.extend(evaluation.events)

    def _persist(self, conn: Connection, pending: PendingDetection, partition_of: Callable[[str], int]) -> None:
        violations.record_events(conn, pending.events)
        violations.save_alarm_states(conn, pending.changes.states, partition_of)
        self._alerts.enqueue(conn, pending.alerts())

    def _after_commit(self, pending: PendingDetection) -> None:
        """Memory catches up with a committed transaction; a failure here must not make the
        durable batch look failed (it is logged)."""
        try:
            self._apply(pending)
        except Exception:
            log.exception("after_commit_failed")

    def _apply(self, pending: PendingDetection) -> None:
        self.evaluator.apply(pending.changes)
        for event in pending.events:
            if event.event_type is EventType.IN_ALARM:
                self._raised_on[event.violation_id] = event.behavior.get("metric")
            log.info("violation_event", event_type=event.event_type.value, violation_id=event.violation_id,
                     thing=event.thing_name, profile=event.profile_name, behavior=event.behavior.get("name"))

    # -- invalidation sweeps ----------------------------------------------------------------------
    def sweep(self, now: float, owns: Callable[[str], bool] | None = None,
              first: Callable[[Connection], None] | None = None) -> PendingDetection | None:
        """Invalidate alarms whose device went silent or that nothing monitors any more; returns
        what was stored (None when nothing was due).

        Cluster mode sweeps only the things ``owns`` selects (its partitions) and runs ``first``
        (the fence checks of those partitions) at the start of the transaction: a node that lost a
        partition meanwhile stores nothing for it."""
        with self._lock:
            self._refresh_models()
            if now - self._windows_pruned_at >= self.evaluator.window_horizon:  # a pass over every thing held
                self.evaluator.forget_expired_windows(now)
                self._windows_pruned_at = now
            if self._unconfirmed is None and not self._stale(now, owns)[0]:
                return None  # the usual case: no write transaction at all
            with self._transaction() as run:
                if first is not None:
                    first(run.conn)
                stale, behaviors = self._stale(now, owns)  # again: settling may have changed the alarms
                for reason in set(stale.values()):
                    keys = [k for k, r in stale.items() if r == reason]
                    self._collect(run.pending, self.evaluator.invalidate(keys, behaviors, now, reason,
                                                                         run.pending.changes))
                self._fill_behaviors(run.conn, run.pending)
                run.pending.note_targets(run.pending.events, self._monitoring.profile)
                self._persist(run.conn, run.pending, run.partition_of)
            return run.pending if stale else None

    def _stale(self, now: float, owns: Callable[[str], bool] | None = None
               ) -> tuple[dict[StateKey, str], dict[StateKey, Mapping[str, Any]]]:
        """The alarms to invalidate, with why, and the current behavior of each alarm."""
        stale: dict[StateKey, str] = {}
        behaviors: dict[StateKey, Mapping[str, Any]] = {}
        alarms = list(self.evaluator.alarms())
        # The registry facts of every alarmed thing in a few queries, not one each: after a change
        # (which drops them) the sweep runs at once (pipeline/sweep_wake.py).
        alarmed = [key[0] for key, _ in alarms if owns is None or owns(key[0])]
        if alarmed:
            self._monitoring.prime(alarmed)
        self._note_metrics_raised_on([state for _, state in alarms])
        for key, state in alarms:
            thing, profile_name, behavior_name, _ = key
            if owns is not None and not owns(thing):
                continue
            current = {p["name"]: p for p in self._monitoring.profiles_for(thing)}
            profile = current.get(profile_name)
            behavior = next((b for b in (profile or {}).get("behaviors") or []
                             if b.get("name") == behavior_name), None)
            if profile is None:
                stale[key] = "the security profile no longer monitors this thing"
            elif behavior is None:
                stale[key] = "the behavior was removed from the security profile"
            elif self._raised_on_another_metric(key, state, behavior):
                # Another behavior under the same name: its datapoints would end this alarm
                # (alarm-cleared by a bytes count of an alarm on listening ports). Its event
                # carries the behavior the alarm was raised on (``_fill_behaviors``).
                stale[key] = "the behavior's metric or dimension changed"
                continue
            elif confidence_of(behavior) is not None and self.evaluator.model_for(profile_name, behavior) is None:
                stale[key] = "the behavior's ML model is not active"
            elif due_for_invalidation(state, now, self._invalidation_period):
                stale[key] = "no datapoint for the invalidation period"
            if behavior is not None:
                behaviors[key] = behavior
        return stale, behaviors

    def _note_metrics_raised_on(self, alarms: list[AlarmState]) -> None:
        """``_raised_on`` for exactly the alarms in alarm: those not noted since this process
        started or took their partition over (their in-alarm events were stored before) are read
        from their first events, in one statement per chunk, once."""
        ids = {state.violation_id for state in alarms if state.violation_id is not None}
        missing = [violation_id for violation_id in ids if violation_id not in self._raised_on]
        if missing:
            with self._engine.connect() as conn:
                originals = violations.first_events(conn, missing)
            for violation_id in missing:
                original = originals.get(violation_id)
                self._raised_on[violation_id] = (original.behavior or {}).get("metric") if original is not None else None
        if len(self._raised_on) > len(ids):
            self._raised_on = {violation_id: metric for violation_id, metric in self._raised_on.items()
                               if violation_id in ids}

    def _raised_on_another_metric(self, key: StateKey, state: AlarmState, behavior: Mapping[str, Any]) -> bool:
        """Whether the alarm was raised on another metric or dimension than ``behavior`` has now."""
        if key[3] != dimension_key_of(behavior):
            return True
        raised_on = self._raised_on.get(state.violation_id) if state.violation_id is not None else None
        return raised_on is not None and raised_on != behavior.get("metric")

    @staticmethod
    def _fill_behaviors(conn: Connection, pending: PendingDetection) -> None:
        """Events of removed behaviors carry the behavior as it was when the alarm was raised (read
        for all of them at once: a detached profile's thousands of alarms asked one query each,
        under the detection lock)."""
        originals = violations.first_events(conn, [event.violation_id for event in pending.events
                                                   if "metric" not in event.behavior])
        filled = []
        for event in pending.events:
            original = originals.get(event.violation_id) if "metric" not in event.behavior else None
            if original is not None:
                event = ViolationEvent(**{**event.__dict__, "behavior": original.behavior,
                                          "criteria_type": original.criteria_type, "suppressed": original.suppressed})
            filled.append(event)
        pending.events[:] = filled
