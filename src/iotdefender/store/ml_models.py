"""SQL for ML Detect: each ML behavior's training progress and the model versions built for it.

The trainer (pipeline/ml_training.py) is the only writer; the control plane reads the progress
(GetBehaviorModelTrainingSummaries) and a version (the model extension), and detection reads
the active versions (pipeline/ml_registry.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.rows import upsert
from iotdefender.store.schema import ml_models, ml_training

PENDING_BUILD, ACTIVE, EXPIRED = "PENDING_BUILD", "ACTIVE", "EXPIRED"

BehaviorKey = tuple[str, str]  # (profile, behavior)


@dataclass(frozen=True)
class Training:
    """One ML behavior's progress towards (and life with) its model."""

    profile_name: str
    behavior_name: str
    series: str
    dimension: str
    fingerprint: str
    collection_start: float
    status: str
    datapoints: int
    datapoints_percentage: float
    last_attempt_at: float | None = None
    last_refresh_at: float | None = None
    active_version: int | None = None

    @property
    def key(self) -> BehaviorKey:
        return (self.profile_name, self.behavior_name)


@dataclass(frozen=True)
class ModelVersion:
    """One model built for a behavior: what it was trained on, and the model itself."""

    profile_name: str
    behavior_name: str
    version: int
    series: str
    dimension: str
    window_start: float
    window_end: float
    datapoints: int
    devices: int
    trained_at: float
    model: bytes


def load_trainings(conn: Connection, profile_name: str | None = None) -> dict[BehaviorKey, Training]:
    query = sa.select(ml_training)
    if profile_name is not None:
        query = query.where(ml_training.c.profile_name == profile_name)
    return {(r["profile_name"], r["behavior_name"]): Training(**r) for r in conn.execute(query).mappings()}


def save_training(conn: Connection, training: Training) -> None:
    values = asdict(training)
    stmt = upsert(conn, ml_training).values(**values)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[ml_training.c.profile_name, ml_training.c.behavior_name],
        set_={k: v for k, v in values.items() if k not in ("profile_name", "behavior_name")}))


def delete_trainings(conn: Connection, keys: Iterable[BehaviorKey]) -> None:
    """Forget behaviors (and every model built for them) that are gone or must start over."""
    for profile, behavior in keys:
        for table in (ml_training, ml_models):
            conn.execute(table.delete().where(table.c.profile_name == profile, table.c.behavior_name == behavior))


def insert_model(conn: Connection, model: ModelVersion) -> None:
    conn.execute(ml_models.insert().values(**asdict(model)))


def next_version(conn: Connection, key: BehaviorKey) -> int:
    found = conn.execute(sa.select(sa.func.max(ml_models.c.version)).where(
        ml_models.c.profile_name == key[0], ml_models.c.behavior_name == key[1])).scalar()
    return int(found or 0) + 1


def load_model(conn: Connection, key: BehaviorKey, version: int) -> ModelVersion | None:
    row = conn.execute(sa.select(ml_models).where(
        ml_models.c.profile_name == key[0], ml_models.c.behavior_name == key[1],
        ml_models.c.version == version)).mappings().first()
    return ModelVersion(**row) if row is not None else None


def active_versions(conn: Connection) -> dict[BehaviorKey, int]:
    """The version each ACTIVE behavior evaluates with (EXPIRED and PENDING_BUILD ones: none)."""
    query = sa.select(ml_training.c.profile_name, ml_training.c.behavior_name, ml_training.c.active_version).where(
        ml_training.c.status == ACTIVE, ml_training.c.active_version.is_not(None))
    return {(p, b): int(v) for p, b, v in conn.execute(query)}


def delete_versions_before(conn: Connection, key: BehaviorKey, keep_from: int) -> int:
    """Drop the versions older than ``keep_from`` (the trainer keeps the last few)."""
    return conn.execute(ml_models.delete().where(
        ml_models.c.profile_name == key[0], ml_models.c.behavior_name == key[1],
        ml_models.c.version < keep_from)).rowcount


def versions_of(conn: Connection, key: BehaviorKey, trained_before: float, models: bool = True) -> list[ModelVersion]:
    """Every kept version of a behavior built before ``trained_before``, oldest first (a backtest
    replays each moment with the version that was active then); without ``models``, what each was
    trained on only (``model`` empty: a fleet's model is tens of MB, and up to 15 are kept)."""
    columns = [column for column in ml_models.c if models or column.name != "model"]
    query = sa.select(*columns).where(
        ml_models.c.profile_name == key[0], ml_models.c.behavior_name == key[1],
        ml_models.c.trained_at <= trained_before).order_by(ml_models.c.trained_at, ml_models.c.version)
    return [ModelVersion(**{"model": b"", **row}) for row in conn.execute(query).mappings()]
