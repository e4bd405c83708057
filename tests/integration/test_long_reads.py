"""A read that takes long to decode does not leave its transaction idle (real PostgreSQL).

PostgreSQL ends a session idle in a transaction for ``IDLE_IN_TRANSACTION_S`` (30 s; store/database.py).
A detect node's start or takeover at a large fleet decodes the trailing hour for longer than that;
decoded between two statements of one transaction, the read failed
(``IdleInTransactionSessionTimeout``, found at a partition's share of 10M devices with
bench/restart_refill.py). Here the bound is 1 s and the decoding is made to take 1.5 s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from iotdefender.alerts.routes import AlertRoutes
from iotdefender.cluster.partitions import partition_of
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.ml_training import MlBehavior, MlTrainer, TrainingSchedule
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store import history
from iotdefender.store.database import create_engine, writing
from iotdefender.store.metric_values import RetainedReport, insert_reports

pytestmark = pytest.mark.postgres

ARN = "arn:aws:iot:us-east-1:123456789012:"
NOW = 1_800_000_000.0


@pytest.fixture
def url(postgres, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    """A database with a profile that sums bytes out over the hour, and an hour of two things' bytes."""
    url = postgres.create_database(f"long{time.monotonic_ns()}")
    api = build_api(Settings(data_dir=tmp_path, database_url=url))
    api.invoke("CreateSecurityProfile", {"securityProfileName": "hourly", "behaviors": [
        {"name": "bytes-1h", "metric": "aws:all-bytes-out",
         "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 10_000_000},
                      "durationSeconds": 3600}}]})
    api.invoke("AttachSecurityProfile", {"securityProfileName": "hourly",
                                         "securityProfileTargetArn": api.context.arn("all/things")})
    with writing(api.context.engine) as conn:
        insert_reports(conn, [RetainedReport(thing, NOW - 3000 + 300 * i, {"aws:all-bytes-out": {"count": 100}})
                              for i in range(10) for thing in ("t-a", "t-b")])
    api.context.engine.dispose()
    return url


@pytest.fixture
def slow_decoding(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    merge = history._merge

    def slow(parts: Any) -> Any:
        time.sleep(1.5)
        return merge(parts)

    monkeypatch.setattr(history, "_merge", slow)


def detection(url: str) -> DetectionService:
    engine = create_engine(url, idle_in_transaction_s=1.0)
    return DetectionService(engine, MonitoringIndex(engine, ARN), AlertRoutes(), 172800.0, clock=lambda: NOW)


def test_a_start_whose_windows_take_long_to_decode_loads_them(url, slow_decoding) -> None:  # type: ignore[no-untyped-def]
    node = detection(url)
    node.load()
    assert set(node.evaluator._history) == {"t-a", "t-b"}
    assert len(node.evaluator._history["t-a"]["aws:all-bytes-out"]) == 10


def test_a_takeover_whose_windows_take_long_to_decode_takes_them_over(url, slow_decoding) -> None:  # type: ignore[no-untyped-def]
    node = detection(url)
    node.take_over(lambda conn: {partition_of("t-a")})
    assert "t-a" in node.evaluator._history and len(node.evaluator._history["t-a"]["aws:all-bytes-out"]) == 10


def test_training_data_that_take_long_to_decode_are_read(url, slow_decoding) -> None:  # type: ignore[no-untyped-def]
    """ML Detect's training reads its behavior's whole training period (14 days of the fleet)."""
    engine = create_engine(url, idle_in_transaction_s=1.0)
    trainer = MlTrainer(engine, MonitoringIndex(engine, ARN), TrainingSchedule(86400.0, 10, 3600.0, 86400.0),
                        on_published=lambda: None)
    data = trainer._training_data(MlBehavior(("hourly", "bytes-1h"), "aws:all-bytes-out", "", ""), NOW - 86400.0, NOW)
    assert len(data.time) == 20
