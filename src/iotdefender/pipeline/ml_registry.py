"""The ML models detection evaluates with: the ACTIVE version of each ML behavior, from the store.

Training (pipeline/ml_training.py) publishes by writing; detection reloads when told
(``DetectionService.invalidate_models``, reached through the batch store's ``invalidate``, also
in the detection worker). A reload reads the active versions and decodes only the models whose
version changed, so a control-plane change that touched no model costs one small query.
"""

from __future__ import annotations

import structlog
from sqlalchemy.engine import Connection

from iotdefender.engine.ml import BehaviorModel
from iotdefender.engine.ml_behavior import ActiveModel, MlModels
from iotdefender.store import ml_models
from iotdefender.store.ml_models import BehaviorKey

log = structlog.get_logger("iotdefender.ml")


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[BehaviorKey, ActiveModel] = {}

    def load(self, conn: Connection) -> MlModels:
        """The active models now (a new mapping: the evaluator's current one is never mutated)."""
        models: dict[BehaviorKey, ActiveModel] = {}
        for key, version in ml_models.active_versions(conn).items():
            current = self._models.get(key)
            if current is not None and current.version == version:
                models[key] = current
                continue
            row = ml_models.load_model(conn, key, version)
            if row is None:
                continue
            try:
                model = BehaviorModel.from_bytes(row.model)
            except ValueError as error:  # a model of a format this version cannot read: not evaluated
                log.error("ml_model_unreadable", profile=key[0], behavior=key[1], version=version, error=str(error))
                continue
            models[key] = ActiveModel(row.series, version, model)
            log.info("ml_model_loaded", profile=key[0], behavior=key[1], version=version)
        self._models = models
        return models
