"""ML Detect's storage: training progress survives as written, versions accumulate, only ACTIVE
behaviors have a version to evaluate with, and a deleted profile takes its models with it."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from iotdefender.store import ml_models, profiles
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request):
    url = (request.getfixturevalue("postgres").create_database(f"ml{time.time_ns()}")
           if request.param == "postgresql" else sqlite_url(Path(tempfile.mkdtemp())))
    engine = create_engine(url)
    upgrade_to_head(engine)
    with engine.begin() as conn:
        profiles.insert(conn, name="p", arn="arn:p", description=None, behaviors=[], version=1, creation_date=1.0,
                        last_modified_date=1.0)
    yield engine
    engine.dispose()


def pending(behavior: str = "b") -> ml_models.Training:
    return ml_models.Training("p", behavior, "aws:num-messages-sent", "", "f1", 100.0, ml_models.PENDING_BUILD, 10,
                              5.0)


def model(version: int) -> ml_models.ModelVersion:
    return ml_models.ModelVersion("p", "b", version, "aws:num-messages-sent", "", 0.0, 10.0, 500, 3, 11.0,
                                  bytes([version]) * 100)


def test_progress_is_upserted_and_only_active_behaviors_have_a_version(engine):
    with engine.begin() as conn:
        ml_models.save_training(conn, pending())
        ml_models.save_training(conn, pending("other"))
    with engine.begin() as conn:
        assert ml_models.next_version(conn, ("p", "b")) == 1
        ml_models.insert_model(conn, model(1))
        ml_models.save_training(conn, replace(pending(), status=ml_models.ACTIVE, active_version=1,
                                              datapoints_percentage=100.0, last_refresh_at=12.0))
    with engine.connect() as conn:
        trainings = ml_models.load_trainings(conn)
        assert trainings[("p", "b")].status == ml_models.ACTIVE and trainings[("p", "b")].last_refresh_at == 12.0
        assert trainings[("p", "other")] == pending("other")
        assert ml_models.active_versions(conn) == {("p", "b"): 1}
        assert ml_models.load_model(conn, ("p", "b"), 1) == model(1)
        assert ml_models.next_version(conn, ("p", "b")) == 2
    with engine.begin() as conn:
        ml_models.save_training(conn, replace(trainings[("p", "b")], status=ml_models.EXPIRED))
    with engine.connect() as conn:
        assert ml_models.active_versions(conn) == {}  # an expired model stops evaluating


def test_old_versions_are_pruned_and_a_deleted_profile_takes_its_models(engine):
    with engine.begin() as conn:
        ml_models.save_training(conn, pending())
        for version in (1, 2, 3):
            ml_models.insert_model(conn, model(version))
        assert ml_models.delete_versions_before(conn, ("p", "b"), 3) == 2
    with engine.connect() as conn:
        assert ml_models.load_model(conn, ("p", "b"), 2) is None and ml_models.load_model(conn, ("p", "b"), 3)
    with engine.begin() as conn:
        profiles.delete(conn, "p")
    with engine.connect() as conn:
        assert ml_models.load_trainings(conn) == {} and ml_models.load_model(conn, ("p", "b"), 3) is None
