"""An ML behavior judged by its model: the engine's side of ML Detect.

The evaluator stays pure: the models reach it as data (``Evaluator.use_models``), swapped whole
when training publishes a new version. A datapoint violates a behavior configured at level L
when the model judges it L or more confident (``ConfidenceLevel.reached_by``): HIGH alarms least.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from iotdefender.engine.ml import BehaviorModel, ConfidenceLevel


@dataclass(frozen=True)
class ActiveModel:
    """The model a behavior evaluates with, and what it was trained on (a model of another series
    is never used: the behavior's metric changed and its new model is not built yet)."""

    series: str
    version: int
    model: BehaviorModel


# (profile, behavior) -> its active model
MlModels = Mapping[tuple[str, str], ActiveModel]


def confidence_of(behavior: Mapping[str, Any]) -> str | None:
    """The behavior's mlDetectionConfig.confidenceLevel, or None for a behavior that is not ML."""
    config = (behavior.get("criteria") or {}).get("mlDetectionConfig")
    level = config.get("confidenceLevel") if isinstance(config, Mapping) else None
    return level if isinstance(level, str) else None


def additional_info(behavior: Mapping[str, Any]) -> dict[str, Any] | None:
    """``violationEventAdditionalInfo`` of a violation of this behavior (events, active violations,
    alerts): the confidence level it was evaluated at; None for rules (AWS sends none)."""
    level = confidence_of(behavior)
    return {"confidenceLevel": level} if level is not None else None


def violates(active: ActiveModel, level: ConfidenceLevel, thing: str, value: float, at: float) -> bool:
    """Whether the datapoint is outside the behavior's band (the ingest path: a few µs)."""
    return level.reached_by(active.model.judge(thing, value, at))


def evidence(active: ActiveModel, level: ConfidenceLevel, metric: str, thing: str, value: float,
             at: float) -> dict[str, Any]:
    """Why a transition happened, in the metric's units: the band of the behavior's level at that
    hour of the week for this device, the level the value reached, and one sentence."""
    low, high = active.model.band(thing, at, level)
    judged = active.model.judge(thing, value, at)
    return {"confidenceLevel": level.value, "judgedConfidenceLevel": judged.value if judged is not None else None,
            "band": {"low": low, "high": high}, "modelVersion": active.version,
            "explanation": active.model.explain(thing, value, at, what=metric)}
