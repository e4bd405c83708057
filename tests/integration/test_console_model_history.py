"""A device chart draws each ML model version's band over the time it was in force: from its
training until the next version replaced it (the console drew only the active version's band)."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from iotdefender.console.chart_marks import add_model_bands
from iotdefender.controlplane.behavior_models import model_history_of
from iotdefender.engine.ml import SeasonalClock, TrainingData, TrainingSettings, train
from iotdefender.store import ml_models, profiles
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head

METRIC = "aws:all-bytes-out"
BEHAVIOR = {"name": "b", "metric": METRIC, "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}}}
PROFILE = {"name": "p", "behaviors": [BEHAVIOR]}


def stored_model(version: int, trained_at: float) -> ml_models.ModelVersion:
    rng = np.random.default_rng(version)
    times = np.sort(rng.uniform(0, trained_at, 2000))
    model = train(TrainingData(np.zeros(2000, np.int32), ["d"], times, rng.uniform(900, 1100, 2000) * version),
                  trained_at=trained_at, settings=TrainingSettings(clock=SeasonalClock(hour_seconds=10.0, origin=0.0)))
    return ml_models.ModelVersion("p", "b", version, METRIC, "", 0.0, trained_at, 2000, 1, trained_at, model.to_bytes())


@pytest.fixture
def engine():
    engine = create_engine(sqlite_url(Path(tempfile.mkdtemp())))
    upgrade_to_head(engine)
    training = ml_models.Training("p", "b", METRIC, "", "f1", 0.0, ml_models.ACTIVE, 2000, 100.0, active_version=3)
    with engine.begin() as conn:
        profiles.insert(conn, name="p", arn="arn:p", description=None, behaviors=[BEHAVIOR], version=1,
                        creation_date=1.0, last_modified_date=1.0)
        for version, trained_at in ((1, 100.0), (2, 200.0), (3, 300.0)):
            ml_models.insert_model(conn, stored_model(version, trained_at))
        ml_models.save_training(conn, training)
    yield engine, training
    engine.dispose()


def test_each_version_is_drawn_while_it_was_in_force(engine):
    engine, _ = engine
    with engine.connect() as conn:
        history = model_history_of(conn, [PROFILE], 150.0, 400.0)
    assert [(version, until) for _, _, _, version, until in history] == [(1, 200.0), (2, 300.0), (3, None)]
    bands = add_model_bands({}, history, "d", 150.0, 400.0)[METRIC]["bands"]
    spans = [(b["version"], b["points"][0][0], b["points"][-1][0], b["until"]) for b in bands]
    assert spans == [(1, 150.0, 200.0, 200.0), (2, 200.0, 300.0, 300.0), (3, 300.0, 400.0, None)]
    # Each version draws its own band (they were trained on different data).
    assert bands[0]["points"][-1][2] < bands[1]["points"][0][2] < bands[2]["points"][0][2]
    with engine.connect() as conn:  # a version replaced before the range has nothing to draw
        assert [h[3] for h in model_history_of(conn, [PROFILE], 250.0, 400.0)] == [2, 3]


def test_an_expired_models_last_version_is_not_drawn_on(engine):
    engine, training = engine
    with engine.begin() as conn:
        ml_models.save_training(conn, replace(training, status=ml_models.EXPIRED))
    with engine.connect() as conn:
        assert [(h[3], h[4]) for h in model_history_of(conn, [PROFILE], 0.0, 400.0)] == [(1, 200.0), (2, 300.0)]


def test_only_the_versions_drawn_are_read_whole(engine):
    """Each version is a fleet's model (87 MB at 1M devices) and up to 15 are kept: the page read
    them all to draw one or two."""
    import sqlalchemy as sa

    engine, _ = engine
    read: list[str] = []

    def note(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        read.append(statement)

    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        with engine.connect() as conn:
            assert [h[3] for h in model_history_of(conn, [PROFILE], 350.0, 400.0)] == [3]
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
    whole = [s for s in read if "ml_models.model" in s]
    assert len(whole) == 1 and "ml_models.version = " in whole[0]  # version 3's, not every version's
