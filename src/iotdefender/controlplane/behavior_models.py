"""GetBehaviorModelTrainingSummaries, and the extension that shows a model in the metric's units.

Every ML behavior of the listed profiles has a summary, whether or not the trainer has seen it
yet (then ``PENDING_BUILD`` at 0 %, with no dates: AWS's example for a new behavior). Summaries
are ordered by (profile, behavior name) and paged on that key. ``trainingDataCollectionStartDate``
is given as soon as collection started (AWS's documentation: "The date a training model started
collecting data"), ``lastModelRefreshDate`` once a model was built.

The extension (``GET /_iotdefender/behavior-models/{profile}/{behavior}[/things/{thing}]``,
docs/api-behaviour.md) answers what AWS never shows: the band of every confidence level for each
slot of the week (half an hour), in the metric's units, for the fleet or for one device.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.engine import Connection

from iotdefender.contract.errors import not_found
from iotdefender.contract.service_model import service_model
from iotdefender.contract.validation import validate_value
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.controlplane.pagination import decode_token, encode_token, scope_of
from iotdefender.engine.ml import LEVELS, BehaviorModel
from iotdefender.engine.ml.clock import SeasonalClock
from iotdefender.engine.ml_behavior import confidence_of
from iotdefender.engine.series import behavior_series
from iotdefender.store import ml_models, profiles
from iotdefender.store.ml_models import ACTIVE, PENDING_BUILD, Training

operation = OperationTable()

DEFAULT_SUMMARIES = 10  # the model's documented default for maxResults


def _ml_behaviors(rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, Mapping[str, Any]]]:
    found = [(p["name"], b.get("name", ""), b) for p in rows for b in p.get("behaviors") or []
             if isinstance(b, Mapping) and confidence_of(b) is not None]
    return sorted(found, key=lambda item: (item[0], item[1]))


def _training_of(trainings: Mapping[tuple[str, str], Training], profile: str,
                 behavior: Mapping[str, Any]) -> Training | None:
    """The behavior's stored progress, unless it is of the behavior as it was before an edit."""
    training = trainings.get((profile, behavior.get("name", "")))
    return training if training is not None and training.series == behavior_series(behavior) else None


def _summary(profile: str, name: str, training: Training | None) -> Params:
    summary: Params = {"securityProfileName": profile, "behaviorName": name,
                       "modelStatus": training.status if training else PENDING_BUILD,
                       "datapointsCollectionPercentage": training.datapoints_percentage if training else 0.0}
    if training is not None:
        summary["trainingDataCollectionStartDate"] = training.collection_start
        if training.last_refresh_at is not None:
            summary["lastModelRefreshDate"] = training.last_refresh_at
    return summary


@operation("GetBehaviorModelTrainingSummaries")
def get_behavior_model_training_summaries(ctx: ServiceContext, params: Params) -> Params:
    name = params.get("securityProfileName")
    scope = scope_of(params)
    after = decode_token(params.get("nextToken"), scope, (str, str))
    limit = params.get("maxResults") or DEFAULT_SUMMARIES
    with ctx.engine.connect() as conn:
        if name is not None:
            profile = profiles.get(conn, name)
            if profile is None:
                raise not_found(f"Security profile {name} does not exist")
            rows = [profile]
        else:
            rows = profiles.all_profiles(conn)
        trainings = ml_models.load_trainings(conn, name)
    items = [item for item in _ml_behaviors(rows) if after is None or (item[0], item[1]) > tuple(after)]
    page = items[:limit]
    return {"summaries": [_summary(p, b, _training_of(trainings, p, behavior)) for p, b, behavior in page],
            "nextToken": encode_token([page[-1][0], page[-1][1]], scope) if len(items) > limit else None}


def behavior_model_document(ctx: ServiceContext, profile_name: str, behavior_name: str,
                            thing_name: str | None = None) -> Params:
    """Extension: a behavior's training summary and its active model, readable: per slot of the week
    (half an hour) and confidence level the normal band [low, high] at the slot's centre in the
    metric's units (for ``thing_name``, or for a device judged against the fleet)."""
    model_shapes = service_model()
    validate_value(model_shapes.shape_for("SecurityProfileName"), profile_name, "securityProfileName")
    validate_value(model_shapes.shape_for("BehaviorName"), behavior_name, "behaviorName")
    if thing_name is not None:
        validate_value(model_shapes.shape_for("DeviceDefenderThingName"), thing_name, "thingName")
    with ctx.engine.connect() as conn:
        profile = profiles.get(conn, profile_name)
        behavior = next((b for b in (profile or {}).get("behaviors") or []
                         if b.get("name") == behavior_name and confidence_of(b) is not None), None)
        if profile is None or behavior is None:
            raise not_found(f"Security profile {profile_name} has no ML behavior {behavior_name}")
        training = _training_of(ml_models.load_trainings(conn, profile_name), profile_name, behavior)
        stored = (ml_models.load_model(conn, training.key, training.active_version)
                  if training is not None and training.active_version is not None else None)
    document: Params = {**_summary(profile_name, behavior_name, training), "behavior": behavior,
                        "thingName": thing_name, "model": None}
    if stored is None:
        return document
    model = BehaviorModel.from_bytes(stored.model)
    summary = model.summary()
    device = thing_name if thing_name is not None else ""  # no thing is named "": the fleet's band
    clock = model.clock
    document["model"] = {
        "version": stored.version, "trainedAt": stored.trained_at,
        "trainingWindow": {"start": stored.window_start, "end": stored.window_end},
        "datapoints": stored.datapoints, "devices": stored.devices,
        "devicesWithOwnBand": summary.devices_with_own_band, "hourSeconds": clock.hour_seconds,
        "slotSeconds": clock.slot_seconds,
        "thresholds": {level.value: score for level, score in model.thresholds(device).items()},
        "thresholdsBelow": {level.value: score for level, score in model.thresholds(device, below=True).items()},
        "bands": [_slot_bands(model, device, clock, slot) for slot in range(clock.slots)],
    }
    return document


def _slot_bands(model: BehaviorModel, device: str, clock: SeasonalClock, slot: int) -> Params:
    """The bands at the centre of one slot of the week (the model draws a line between centres)."""
    at = clock.origin + (slot + 0.5) * clock.slot_seconds
    return {"slot": slot, "label": clock.label(slot),
            **{level.value: list(model.band(device, at, level)) for level in LEVELS}}


def model_history_of(conn: Connection, monitoring: Iterable[Mapping[str, Any]], start: float, end: float
                     ) -> list[tuple[str, dict[str, Any], BehaviorModel, int, float | None]]:
    """(profile name, ML behavior, a model version, its number, when the next version replaced it)
    for every kept version of the ML behaviors of these profiles that judged datapoints between
    ``start`` and ``end`` (the console's device charts draw each version's band over the time it
    was in force). The newest version counts only while it is the active one of an ACTIVE model
    (``until`` None): an expired model no longer judges, and when it expired is not kept."""
    found = []
    for profile in monitoring:
        trainings = None
        for behavior in profile.get("behaviors") or []:
            if confidence_of(behavior) is None:
                continue
            if trainings is None:
                trainings = ml_models.load_trainings(conn, profile["name"])
            training = _training_of(trainings, profile["name"], behavior)
            if training is None:
                continue
            key = (profile["name"], behavior["name"])
            # What each version was trained on first, the models of those drawn only: each is a
            # fleet's model (87 MB at 1M devices), and every kept one was read at each page view.
            versions = [v for v in ml_models.versions_of(conn, key, end, models=False) if v.series == training.series]
            for i, stored in enumerate(versions):
                until = versions[i + 1].trained_at if i + 1 < len(versions) else None
                if until is None and (training.status != ACTIVE or training.active_version != stored.version):
                    continue
                if until is not None and until <= start:
                    continue  # replaced before the chart's range: nothing of it to draw
                drawn = ml_models.load_model(conn, key, stored.version)
                if drawn is not None:
                    found.append((profile["name"], dict(behavior), BehaviorModel.from_bytes(drawn.model),
                                  stored.version, until))
    return found
