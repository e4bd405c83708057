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
    # A slot of the week with fewer datapoints than this (over the fleet) borrows the statistics
    # of its slot of the day, and a slot of the day below it the whole period's. 20 datapoints
    # give a median to a quarter of a spread; at 200, one device with 5,000 datapoints (17 days)
    # had only the whole period's and its daily rhythm was lost in a flat band.
    min_bucket_datapoints: int = 20
    # The spread never goes below this, in natural-log units (5 %): a metric that never moved
    # (3 listening ports) still has a band, and moving by one is judged by how far it moved.
    min_scale: float = 0.05
    # Each level is reached by this share of normal datapoints (estimated on the training scores
    # of devices with a tail like the device's: calibration.py). At 288 reports a day, HIGH's 2 per
    # million is about 0.6 false alarms per 1,000 device-days, MEDIUM 29 and LOW 288.
    exceedance: tuple[tuple[ConfidenceLevel, float], ...] = (
        (ConfidenceLevel.LOW, 1e-3),
        (ConfidenceLevel.MEDIUM, 1e-4),
        (ConfidenceLevel.HIGH, 2e-6),
    )
    # ... but never below this many robust standard deviations, so a perfectly regular metric
    # does not alarm on noise the training period happened not to show.
    min_scores: tuple[tuple[ConfidenceLevel, float], ...] = (
        (ConfidenceLevel.LOW, 3.0),
        (ConfidenceLevel.MEDIUM, 3.5),
        (ConfidenceLevel.HIGH, 4.5),
    )
    # How many shared rhythms a device's own rhythm is made of (seasonal.py); 0 = the fleet's only.
    rank: int = 16
    # Devices are grouped by how heavy their tail is into this many cohorts, each with its own thresholds.
    tail_cohorts: int = 16
    # Training statistics come from at most this many datapoints, drawn uniformly (seeded, so
    # training is deterministic): 100k devices x 14 days is 403M datapoints. The sample serves what
    # the fleet shares (its centre and spread per slot, the slot shape, the thresholds); when the
    # datapoints come grouped by device, each device's level, rhythm and spread and how heavy its
    # tail is come from all its datapoints in one pass (refit.py, tails.py). 12M (~120 a device at
    # 100k) pays for that pass within the 25M sample's time; it stays above the benchmark's 2,000
    # devices x 14 days (8.06M), which train on all their datapoints (bench/README.md).
    max_datapoints: int = 12_000_000
    # The fleet's per-bucket medians come from at most this many (they are 168 numbers).
    fleet_sample: int = 1_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_scale <= 0:
            raise ValueError("min_scale must be positive")
        if [level for level, _ in self.exceedance] != list(ConfidenceLevel) or \
                [level for level, _ in self.min_scores] != list(ConfidenceLevel):
            raise ValueError("exceedance and min_scores name LOW, MEDIUM, HIGH in that order")
        if not all(0 < share < 1 for _, share in self.exceedance):
            raise ValueError("an exceedance is a share between 0 and 1")
        if self.rank < 0 or not 1 <= self.tail_cohorts <= 255:
            raise ValueError("rank must be >= 0 and tail_cohorts between 1 and 255")
        if self.max_datapoints < 1 or self.fleet_sample < 1:
            raise ValueError("sample sizes must be positive")
