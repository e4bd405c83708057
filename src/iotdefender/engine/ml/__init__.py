"""ML Detect's model: learn each device's normal band per hour of the week, judge datapoints against it.

Pure (numpy, msgspec, and numba for training's compiled loops, whose on-disk cache is its only I/O;
time passed in): the service trains in the background on stored datapoints, stores ``to_bytes()``,
and calls ``judge`` on the ingest path.
"""

from iotdefender.engine.ml.clock import SeasonalClock
from iotdefender.engine.ml.data import TrainingData
from iotdefender.engine.ml.levels import LEVELS, ConfidenceLevel
from iotdefender.engine.ml.model import BehaviorModel, ModelSummary
from iotdefender.engine.ml.settings import TrainingSettings
from iotdefender.engine.ml.training import train

__all__ = ["LEVELS", "BehaviorModel", "ConfidenceLevel", "ModelSummary", "SeasonalClock", "TrainingData",
           "TrainingSettings", "train"]
