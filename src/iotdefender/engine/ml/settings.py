"""The knobs of training, with the defaults the benchmark (bench/ml_detect.py) chose.

Every period is on the service's clock (``SeasonalClock``), so ``--time-scale`` shrinks them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from iotdefender.engine.ml.clock import SeasonalClock
from iotdefender.engine.ml.levels import ConfidenceLevel


@dataclass(frozen=True)
class TrainingSettings:
    clock: SeasonalClock = field(default_factory=SeasonalClock)
    # A device gets its own level and spread once it has this many datapoints in the trailing period
    # (about 8 hours at one report per 5 minutes); until then it is judged against the fleet.
    min_device_datapoints: int = 100
    # An hour-of-week bucket with fewer datapoints than this (over the fleet) borrows the statistics
    # of its hour of the day, and an hour of the day below it the whole period's.
    min_bucket_datapoints: int = 200
    # The spread never goes below this, in natural-log units (5 %): a metric that never moved
    # (3 listening ports) still has a band, and moving by one is judged by how far it moved.
    min_scale: float = 0.05
    # Each level's threshold is this quantile of the training scores (the share of normal training
    # datapoints that would have been judged at that level or above is 1 - q) ...
    quantiles: tuple[tuple[ConfidenceLevel, float], ...] = (
        (ConfidenceLevel.LOW, 0.999),
        (ConfidenceLevel.MEDIUM, 0.9999),
        (ConfidenceLevel.HIGH, 0.999995),
    )
    # ... but never below this many robust standard deviations, so a perfectly regular metric
    # does not alarm on noise the training period happened not to show.
    min_scores: tuple[tuple[ConfidenceLevel, float], ...] = (
        (ConfidenceLevel.LOW, 3.0),
        (ConfidenceLevel.MEDIUM, 4.0),
        (ConfidenceLevel.HIGH, 5.0),
    )
    # Training statistics come from at most this many datapoints, drawn uniformly (seeded, so
    # training is deterministic): 100k devices x 14 days is 403M datapoints, and ~600 per device
    # estimate a level and a spread to a few percent.
    max_datapoints: int = 60_000_000
    # The fleet's per-bucket medians come from at most this many (they are 168 numbers).
    fleet_sample: int = 2_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_scale <= 0:
            raise ValueError("min_scale must be positive")
        if [level for level, _ in self.quantiles] != list(ConfidenceLevel) or \
                [level for level, _ in self.min_scores] != list(ConfidenceLevel):
            raise ValueError("quantiles and min_scores name LOW, MEDIUM, HIGH in that order")
        if self.max_datapoints < 1 or self.fleet_sample < 1:
            raise ValueError("sample sizes must be positive")
