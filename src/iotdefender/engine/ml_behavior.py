"""An ML behavior judged by its model: the engine's side of ML Detect.

The evaluator stays pure: the models reach it as data (``Evaluator.use_models``), swapped whole
when training publishes a new version. A datapoint violates a behavior configured at level L
when the model judges it L or more confident (``ConfidenceLevel.reached_by``): HIGH alarms least.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from iotdefender.engine.ml import BehaviorModel, ConfidenceLevel
from iotdefender.english import numbers_apart, quantity
from iotdefender.metrics_catalog import BUILTIN_METRICS, METRIC_UNITS


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


def counts(series: str) -> bool:
    """Whether a series' values are counts (integers: ports, connections, messages, bytes ...),
    which the band's continuity correction applies to (``judge``); custom numbers are not."""
    spec = BUILTIN_METRICS.get(series.split("|", 1)[0])
    return spec is not None and spec.value_member == "count"


def _less_confident(a: ConfidenceLevel | None, b: ConfidenceLevel | None) -> ConfidenceLevel | None:
    return None if a is None or b is None else (a if a.rank <= b.rank else b)


def judge(active: ActiveModel, thing: str, value: float, at: float) -> ConfidenceLevel | None:
    """The most confident level the datapoint reaches, with a count's continuity correction.

    The model's band is continuous, a count is not: a band of [0.99, 4.99] cut off the 5 that a
    device reporting 2 to 5 connections sends one time in four, and as the band's edge moved
    between the week's slots (4.99, then 5.65) the same 5 alarmed, cleared and alarmed again
    (measured in an outside-in run, 1 datapoint to alarm and to clear). As for any continuous
    approximation of a discrete variable, a count k is compared with the band widened by half a
    unit on each side: it reaches a level iff k > high + 0.5 or k < low - 0.5, i.e. iff it is
    outside the band with its edges rounded to the nearest integers (``band``), which is what the
    evidence and the console show. AWS says nothing about its band's edges (it shows no band)."""
    model = active.model
    if not counts(active.series):
        return model.judge(thing, value, at)
    return _less_confident(model.judge(thing, max(value - 0.5, 0.0), at), model.judge(thing, value + 0.5, at))


def band(active: ActiveModel, thing: str, at: float, level: ConfidenceLevel) -> tuple[float, float]:
    """The normal range at ``level`` as ``judge`` applies it: for counts the integers inside the
    band widened by half a unit (so a count is either in it or out of it, never on a fractional
    edge), otherwise the model's band."""
    low, high = active.model.band(thing, at, level)
    if not counts(active.series):
        return low, high
    return float(max(0, math.ceil(low - 0.5))), float(math.floor(high + 0.5))


def violates(active: ActiveModel, level: ConfidenceLevel, thing: str, value: float, at: float) -> bool:
    """Whether the datapoint is outside the behavior's band (the ingest path: a few µs)."""
    return level.reached_by(judge(active, thing, value, at))


def evidence(active: ActiveModel, level: ConfidenceLevel, metric: str, thing: str, value: float,
             at: float) -> dict[str, Any]:
    """Why a transition happened, in the metric's units: the band of the behavior's level at that
    hour of the week for this device, the level the value reached, and one sentence.

    The sentence quotes that same band (same level, same model version) — never the band of the
    level the value happened to reach, which a reader would take for the behavior's — and says
    which side of it the value is: outside (the behavior violates: in-alarm) or inside (it does
    not: alarm-cleared, even when the value reaches a lower level than the behavior's)."""
    low, high = band(active, thing, at, level)
    judged = judge(active, thing, value, at)
    return {"confidenceLevel": level.value, "judgedConfidenceLevel": judged.value if judged is not None else None,
            "band": {"low": low, "high": high}, "modelVersion": active.version,
            "explanation": sentence(active, level, metric, thing, value, at)}


def sentence(active: ActiveModel, level: ConfidenceLevel, metric: str, thing: str, value: float, at: float) -> str:
    """E.g. "aws:all-bytes-out 20,112 bytes on Tuesdays 14:30 is above 2,640 bytes, the upper edge
    of the HIGH band of model version 2 for dev-3 (1,470 bytes to 2,640 bytes): 16.9 robust standard
    deviations from normal, judged HIGH".

    The value and the band's edges are written with one number of digits at which they compare as
    they are ("36.21 is above 36.19", never "36.2 is above 36.2"), and units agree with their number
    ("1 message")."""
    model = active.model
    low, high = band(active, thing, at, level)
    judged = judge(active, thing, value, at)
    unit = METRIC_UNITS.get(metric, "")
    shown, shown_low, shown_high = (quantity(text, unit) for text in numbers_apart(value, low, high))
    when = model.clock.label(model.clock.slot(at), every=True)
    named = f"the {level.value} band of model version {active.version} for {thing}"
    measured = f"{metric} {shown} on {when}"
    if not level.reached_by(judged):
        return (f"{measured} is within {named} ({shown_low} to {shown_high}): normal at "
                f"{level.value}" + (f" (it reaches {judged.value} only)" if judged is not None else ""))
    side = f"above {shown_high}, the upper" if value > high else f"below {shown_low}, the lower"
    return (f"{measured} is {side} edge of {named} ({shown_low} to {shown_high}): "
            f"{model.score(thing, value, at):.1f} robust standard deviations from normal, judged "
            f"{judged.value if judged is not None else level.value}")
