"""ML Detect training: builds, refreshes and expires the model of every ML behavior, in the background.

Never on the ingest path: ``MlTrainer.run_once`` runs on a thread of the service (``service.py``
schedules it), reads the retained datapoints outside any write transaction, trains without
holding anything, and takes the single writer only to store the result. Detection learns of a
new model through ``on_published`` (the batch store's ``invalidate``, which also reaches the
detection worker).

AWS's rules (reference §5.7) and what this service decided where AWS is silent (docs/detection.md):
- one model per (profile, ML behavior), trained on the trailing training period of the behavior's
  series, from the devices the profile monitors *now*;
- the first build needs the training period to have elapsed since collection started **and** the
  minimum of datapoints over the trailing period; until then ``PENDING_BUILD`` with
  ``datapointsCollectionPercentage`` = the lesser of the two fractions (time, datapoints), so 100
  means "builds at the next attempt";
- an active model is rebuilt every refresh period on the trailing period **minus the datapoints
  the model in use judged anomalous** (ml_exclusion.py: an anomaly never teaches the next model
  that it is normal; the first build trains on everything); a build that lacks the datapoints
  (counted after that exclusion) keeps the previous model, and a model not rebuilt for the expiry period is
  ``EXPIRED`` (no longer evaluated; later builds that succeed make it ``ACTIVE`` again);
- collection starts when the trainer first sees the behavior, and is stored, so a restart resumes;
- the *fingerprint* (metric, dimension, the profile's targets) is what a model depends on: when it
  changes, the behavior starts over (a model of other devices or of another metric is not this
  behavior's model). The confidence level, consecutive datapoints and suppressAlerts are not in
  it: editing them never retrains (the bands of every level are in every model).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson
import structlog
from sqlalchemy.engine import Engine

from iotdefender.engine import ml
from iotdefender.engine.series import behavior_series
from iotdefender.pipeline.ml_exclusion import without_anomalies
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.store import history, ml_models, profiles
from iotdefender.store.availability import is_unavailable
from iotdefender.store.database import long_statements, writing
from iotdefender.store.ml_models import ACTIVE, EXPIRED, PENDING_BUILD, BehaviorKey, ModelVersion, Training

log = structlog.get_logger("iotdefender.ml")

# Versions kept per behavior besides the active one: a backtest replays each moment with the
# version active then, and 14 daily refreshes cover AWS's 14 days of retained metrics.
VERSIONS_KEPT = 14


@dataclass(frozen=True)
class TrainingSchedule:
    """The ML Detect time constants, already divided by --time-scale (settings.py)."""

    training_period: float
    min_datapoints: int
    refresh_period: float
    expiry: float
    time_scale: float = 1.0

    @property
    def loop_interval(self) -> float:
        """How often the trainer looks: often enough that a pending behavior's percentage climbs
        in steps of about 1 % and a due refresh is not late by much, rarely enough to cost nothing
        (a minute at most)."""
        return min(max(min(self.refresh_period / 24, self.training_period / 100), 0.2), 60.0)


@dataclass(frozen=True)
class MlBehavior:
    """An ML behavior as the trainer sees it: its key, series and what its model depends on."""

    key: BehaviorKey
    series: str
    dimension: str
    fingerprint: str


def ml_behaviors(all_profiles: list[dict[str, Any]], attachments: Mapping[str, list[str]]) -> list[MlBehavior]:
    """Every ML behavior of every profile, with its fingerprint (metric, dimension, targets)."""
    targets: dict[str, list[str]] = {}
    for arn, names in attachments.items():
        for name in names:
            targets.setdefault(name, []).append(arn)
    found = []
    for profile in all_profiles:
        for behavior in profile.get("behaviors") or []:
            criteria = behavior.get("criteria") or {}
            series = behavior_series(behavior)
            if not criteria.get("mlDetectionConfig") or series is None:
                continue
            dimension = behavior.get("metricDimension") or {}
            dimension_key = (f"{dimension.get('dimensionName')}|{dimension.get('operator') or 'IN'}"
                             if dimension else "")
            depends_on = orjson.dumps([series, sorted(targets.get(profile["name"], []))])
            found.append(MlBehavior((profile["name"], behavior["name"]), series, dimension_key,
                                    hashlib.sha256(depends_on).hexdigest()))
    return found


def collection_percentage(elapsed: float, datapoints: int, schedule: TrainingSchedule) -> float:
    """The lesser of the two requirements' fractions, as a percentage (100: a build can happen)."""
    fraction = min(max(elapsed, 0.0) / schedule.training_period, datapoints / schedule.min_datapoints, 1.0)
    return round(100.0 * fraction, 2)


class MlTrainer:
    def __init__(self, engine: Engine, monitoring: MonitoringIndex, schedule: TrainingSchedule,
                 on_published: Callable[[], None],
                 train: Callable[..., ml.BehaviorModel] = ml.train) -> None:
        self._engine = engine
        self._monitoring = monitoring
        self._schedule = schedule
        self._on_published = on_published
        self._train = train

    def run_once(self, now: float) -> list[Training]:
        """One look at every ML behavior: start, drop, build, refresh or expire what is due.
        Returns the progress as stored; detection is told when an active model changed."""
        with self._engine.connect() as conn:
            behaviors = ml_behaviors(profiles.all_profiles(conn), profiles.attachments(conn))
            stored = ml_models.load_trainings(conn)
        wanted = {b.key: b for b in behaviors}
        changed, dropped = self._reconcile(stored, wanted, now)
        if changed:
            with self._engine.connect() as conn:
                stored = ml_models.load_trainings(conn)
        before = {k: (t.status, t.active_version) for k, t in stored.items()}
        result = []
        for key, behavior in wanted.items():
            training = stored.get(key)
            if training is None:
                continue  # the profile went away meanwhile
            try:
                result.append(self._advance(behavior, training, now))
            except Exception as error:  # one behavior's failure must not stop the others' training
                if is_unavailable(error):
                    raise
                log.exception("ml_training_failed", profile=key[0], behavior=key[1])
                result.append(training)
        after = {t.key: (t.status, t.active_version) for t in result}
        if dropped or any(before.get(k) != v for k, v in after.items()):
            self._on_published()
        return result

    def _reconcile(self, stored: Mapping[BehaviorKey, Training], wanted: Mapping[BehaviorKey, MlBehavior],
                   now: float) -> tuple[bool, bool]:
        """Start collection for new behaviors, start over for changed ones, forget removed ones.
        Returns whether anything changed, and whether a behavior with a model lost it."""
        gone = [key for key, t in stored.items() if key not in wanted or t.fingerprint != wanted[key].fingerprint]
        new = [b for key, b in wanted.items() if key not in stored or stored[key].fingerprint != b.fingerprint]
        if not gone and not new:
            return False, False
        with writing(self._engine) as conn:
            ml_models.delete_trainings(conn, gone)
            live = {p["name"] for p in profiles.all_profiles(conn)}
            for behavior in new:
                if behavior.key[0] in live:
                    ml_models.save_training(conn, Training(*behavior.key, behavior.series, behavior.dimension,
                                                           behavior.fingerprint, now, PENDING_BUILD, 0, 0.0))
        for key in gone:
            log.info("ml_training_reset" if key in wanted else "ml_training_dropped", profile=key[0], behavior=key[1])
        for behavior in new:
            log.info("ml_collection_started", profile=behavior.key[0], behavior=behavior.key[1],
                     series=behavior.series)
        return True, any(stored[key].active_version is not None for key in gone)

    def _due(self, training: Training, now: float) -> bool:
        """Whether to read the behavior's datapoints again. A pending behavior is counted every
        hundredth of the training period (the percentage climbs by about 1 % a step; reading 14
        days of a large fleet every minute would cost more than the percentage is worth), an
        active or expired one attempts a build every refresh period."""
        if training.last_attempt_at is None:
            return True
        schedule = self._schedule
        every = (min(schedule.refresh_period, schedule.training_period / 100) if training.status == PENDING_BUILD
                 else schedule.refresh_period)
        return now - training.last_attempt_at >= every

    def _advance(self, behavior: MlBehavior, training: Training, now: float) -> Training:
        schedule = self._schedule
        if not self._due(training, now):
            return self._expire_if_stale(training, now)
        elapsed = now - training.collection_start
        if training.status == PENDING_BUILD and elapsed < schedule.training_period:
            # No build yet, only the percentage: the datapoints are counted, not all read.
            count = self._collected(behavior, training, now)
        else:
            data = self._usable(behavior, training, now - schedule.training_period, now)
            count = len(data.value)
            if elapsed >= schedule.training_period and count >= schedule.min_datapoints:
                return self._build(behavior, training, data, now)
        percentage = collection_percentage(elapsed, count, schedule)
        updated = replace(training, datapoints=count, last_attempt_at=now,
                          datapoints_percentage=percentage)
        return self._expire_if_stale(updated, now, store=True)

    def _usable(self, behavior: MlBehavior, training: Training, start: float, now: float) -> ml.TrainingData:
        """The behavior's datapoints since ``start`` that a model may learn from: the anomalies the
        model in use (if any) finds are left out."""
        data, left_out = without_anomalies(self._model_in_use(training), self._training_data(behavior, start, now),
                                           settled_by=now - self._schedule.training_period / 2)
        if left_out:
            log.info("ml_training_left_out_anomalies", profile=behavior.key[0], behavior=behavior.key[1],
                     datapoints=left_out, version=training.active_version)
        return data

    def _collected(self, behavior: MlBehavior, training: Training, now: float) -> int:
        """The usable datapoints of the trailing training period, or at least ``min_datapoints`` of
        them: read newest first, over a thousandth of the period, then ten times more at each
        step, until that many are found. The percentage needs no more (it is the lesser of the
        period's and the datapoints' fractions), and a fleet of 100,000 devices read its whole
        period (hundreds of millions of datapoints, tens of GB at 14 days) every hundredth of it."""
        period = self._schedule.training_period
        span = period / 1000
        while True:
            span = min(span, period)
            count = len(self._usable(behavior, training, now - span, now).value)
            if count >= self._schedule.min_datapoints or span >= period:
                return count
            span *= 10

    def _model_in_use(self, training: Training) -> ml.BehaviorModel | None:
        """The behavior's latest model (active, or expired: still the best judge of what was
        anomalous), or None before the first build or when it cannot be read."""
        if training.active_version is None:
            return None
        with self._engine.connect() as conn:
            row = ml_models.load_model(conn, training.key, training.active_version)
        if row is None:
            return None
        try:
            return ml.BehaviorModel.from_bytes(row.model)
        except ValueError:
            return None  # a model of another format: the refresh trains on everything, as a first build

    def _expire_if_stale(self, training: Training, now: float, store: bool = False) -> Training:
        if (training.status == ACTIVE and training.last_refresh_at is not None
                and now - training.last_refresh_at >= self._schedule.expiry):
            training = replace(training, status=EXPIRED)
            store = True
            log.info("ml_model_expired", profile=training.profile_name, behavior=training.behavior_name,
                     last_refresh=training.last_refresh_at)
        if store:
            self._save(training)
        return training

    def _training_data(self, behavior: MlBehavior, start: float, now: float) -> ml.TrainingData:
        """The datapoints of the behavior's series since ``start``, from the devices its profile
        monitors now (a device that left the profile's targets does not shape its model), without
        the windows a device spent away (a cloud-side series: ``history.as_trained``)."""
        with long_statements(), self._engine.connect() as conn:  # up to the whole training period
            fetched = history.fetch_for_training(conn, behavior.series, start, now)
        points = history.as_trained(fetched, behavior.series)  # decoded once the transaction has ended
        self._monitoring.prime(points.things)
        profile = behavior.key[0]
        monitored = np.fromiter((any(p["name"] == profile for p in self._monitoring.profiles_for(thing))
                                 for thing in points.things), dtype=bool, count=len(points.things))
        keep = monitored[points.thing_index] if len(points) else np.zeros(0, dtype=bool)
        device, times, values = points.thing_index[keep].astype(np.int32), points.times[keep], points.values[keep]
        # Grouped by device, in time order within each: the model then reads every device's tail
        # from all its datapoints, not from its sample (engine/ml/tails.py).
        order = np.lexsort((times, device))
        return ml.TrainingData(device=device[order], devices=list(points.things), time=times[order],
                               value=values[order])

    def _build(self, behavior: MlBehavior, training: Training, data: ml.TrainingData, now: float) -> Training:
        model = self._train(data, trained_at=now, settings=ml_settings(self._schedule.time_scale))
        blob = model.to_bytes()
        devices = int(len(np.unique(data.device)))
        with writing(self._engine) as conn:
            current = ml_models.load_trainings(conn, behavior.key[0]).get(behavior.key)
            if current is None or current.fingerprint != behavior.fingerprint:
                return training  # the behavior changed while its model was being built: not its model
            version = ml_models.next_version(conn, behavior.key)
            ml_models.insert_model(conn, ModelVersion(
                *behavior.key, version, behavior.series, behavior.dimension, now - self._schedule.training_period,
                now, len(data.value), devices, now, blob))
            ml_models.delete_versions_before(conn, behavior.key, version - VERSIONS_KEPT)
            built = replace(current, status=ACTIVE, datapoints=len(data.value), datapoints_percentage=100.0,
                            last_attempt_at=now, last_refresh_at=now, active_version=version)
            ml_models.save_training(conn, built)
        log.info("ml_model_built", profile=behavior.key[0], behavior=behavior.key[1], version=version,
                 datapoints=len(data.value), devices=devices, bytes=len(blob))
        return built

    def _save(self, training: Training) -> None:
        with writing(self._engine) as conn:
            current = ml_models.load_trainings(conn, training.profile_name).get(training.key)
            if current is not None and current.fingerprint == training.fingerprint:
                ml_models.save_training(conn, training)


def ml_settings(time_scale: float) -> ml.TrainingSettings:
    """The model's hour (and so its day and week) divided by --time-scale, as every period is."""
    return ml.TrainingSettings(clock=ml.SeasonalClock(hour_seconds=3600.0 / time_scale))


async def training_loop(look: Callable[[float], object], interval_s: float) -> None:
    """The trainer's schedule in ``serve``: each ``look(now)`` (``MlTrainer.run_once``, or in
    cluster mode that under a lock) runs on a thread (reading and training are blocking and may
    take seconds at scale); the loop outlives failures and database outages."""
    import asyncio
    import time

    import anyio.to_thread

    from iotdefender.store.availability import log_unless_outage

    while True:
        try:
            await anyio.to_thread.run_sync(look, time.time())
        except Exception as error:
            log_unless_outage(log, "ml_training_failed", error)
        await asyncio.sleep(interval_s)
