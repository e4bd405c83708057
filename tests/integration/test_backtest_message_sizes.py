"""A backtest of message size behaviors replays what live evaluation did: windows built by the
cloud-side aggregator are stored as the service stores them (largest and smallest series, nothing
for windows without messages) in a real SQLite database, and ``run_backtest`` — its vectorised path
for static behaviors, the engine for windowed and statistical ones — gives the live events."""

from __future__ import annotations

import random
from dataclasses import replace as replace
import tempfile
from pathlib import Path

import pytest

from iotdefender.backtest.preview import BacktestPreview
from iotdefender.backtest.runner import BacktestRequest, run_backtest
from iotdefender.cloud.aggregator import Aggregator
from iotdefender.engine.alarm import counting_ids
from iotdefender.engine.evaluator import Evaluator
from iotdefender.metrics_catalog import SIZE_METRICS, size_series
from iotdefender.store import history
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head, writing
from iotdefender.store.metric_values import RetainedReport, insert_reports

SIZE = "aws:message-byte-size"
WINDOW = 300.0
WINDOWS = 60
DEVICES = 6


def behaviors() -> list[dict]:
    at_least = {"comparisonOperator": "greater-than-equals", "value": {"count": 5}}
    at_most = {"comparisonOperator": "less-than", "value": {"count": 900}}
    return [
        {"name": "at-least", "metric": "aws:message-byte-size", "criteria": dict(at_least)},
        {"name": "at-least-900s", "metric": "aws:message-byte-size",
         "criteria": dict(at_least, durationSeconds=900, consecutiveDatapointsToClear=2)},
        {"name": "at-most", "metric": "aws:message-byte-size", "criteria": dict(at_most, consecutiveDatapointsToAlarm=2)},
        {"name": "at-most-600s", "metric": "aws:message-byte-size", "criteria": dict(at_most, durationSeconds=600)},
        {"name": "over-fleet-p10", "metric": "aws:message-byte-size", "criteria": {
            "comparisonOperator": "greater-than", "statisticalThreshold": {"statistic": "p10"}, "durationSeconds": 300}},
    ]


@pytest.fixture(scope="module")
def replay():
    """The live events and the stored history of a fleet sending messages of random sizes, with
    idle windows among them."""
    rng = random.Random(7)
    agg, evaluator = Aggregator(WINDOW), Evaluator(counting_ids())
    profile = {"name": "sizes", "behaviors": behaviors()}
    live: dict[str, list] = {b["name"]: [] for b in profile["behaviors"]}
    stored, legacy = [], []
    for window in range(WINDOWS):
        for d in range(DEVICES):
            agg.seen.add(f"d{d}")
            if rng.random() < 0.3:
                continue  # an idle window
            for _ in range(rng.randint(1, 4)):
                agg.message_sent(f"d{d}", "t", rng.choice([1, 3, 8, 40, 120, 700, 950]), at=window * WINDOW + 1)
    for window in agg.closed_windows(WINDOWS * WINDOW + 1):
        end = (window + 1) * WINDOW
        data = agg.take(window)
        for d in range(DEVICES):
            thing = f"d{d}"
            points = agg.datapoints(thing, data.get(thing), end)
            retained = {k: v for k, v in points.items() if k.split("|", 1)[0] in SIZE_METRICS}
            stored.append(RetainedReport(thing, end, retained))
            # What a release before the smallest was kept stored: the largest alone, 0 when idle.
            legacy.append(RetainedReport(thing, end, {SIZE: retained.get(SIZE, {"count": 0})}))
            evaluation = evaluator.evaluate(thing, [profile], points, end)
            evaluator.apply(evaluation.changes)
            for e in evaluation.events:
                live[e.behavior["name"]].append((thing, e.at, e.event_type.value, e.metric_value))
    return database(stored), live, database(legacy)


def database(reports: list[RetainedReport]):
    engine = create_engine(sqlite_url(Path(tempfile.mkdtemp())))
    upgrade_to_head(engine)
    with writing(engine) as conn:
        insert_reports(conn, reports)
    return engine


def compact(engine) -> None:
    """The columnar segments the compactor writes, as a week-long backtest reads them."""
    with engine.connect() as conn:
        last = history.max_row_id(conn)
    history.compact_until(engine, last)


@pytest.mark.parametrize("compacted", [False, True])
def test_a_backtest_gives_the_live_events(replay, compacted):
    engine, live, _ = replay
    if compacted:
        compact(engine)
    request = BacktestRequest(behaviors(), 0.0, (WINDOWS + 1) * WINDOW, covers=lambda t: True, profile_name="sizes",
                              invalidation_period=1e9)
    result = {b["behaviorName"]: b for b in run_backtest(engine, request)["behaviors"]}
    assert result["at-least"]["method"] == "vectorised" and result["at-least-900s"]["method"] == "engine"
    for name, events in live.items():
        assert events, name  # every behavior alarmed at some point: the comparison means something
        replayed = sorted((e["thingName"], e["violationEventTime"], e["violationEventType"], e["metricValue"])
                          for e in result[name]["events"])
        assert len(replayed) < 200 and replayed == sorted(events), name  # all of them: a summary shows 200
    with engine.connect() as conn:
        assert not compacted or history.series_present(conn, 0.0, (WINDOWS + 1) * WINDOW) >= set(size_series("aws:message-byte-size"))


@pytest.mark.parametrize("compacted", [False, True])
def test_a_backtest_of_history_stored_by_an_older_release_gives_the_live_events(replay, compacted):
    """Releases before the smallest was kept stored each window's largest alone, and 0 for a window
    without messages. "At most" behaviors replay that history as live evaluation judges today: the
    0 of an idle window is no datapoint (it neither clears an alarm nor breaks a run of violations),
    on the vectorised path and the engine's."""
    _, live, engine = replay
    if compacted:
        compact(engine)
    at_most = [b for b in behaviors() if b["name"].startswith("at-most")]
    request = BacktestRequest(at_most, 0.0, (WINDOWS + 1) * WINDOW, covers=lambda t: True, profile_name="sizes",
                              invalidation_period=1e9)
    result = {b["behaviorName"]: b for b in run_backtest(engine, request)["behaviors"]}
    assert [result[b["name"]]["method"] for b in at_most] == ["vectorised", "engine"]
    for behavior in at_most:
        name = behavior["name"]
        replayed = sorted((e["thingName"], e["violationEventTime"], e["violationEventType"], e["metricValue"])
                          for e in result[name]["events"])
        assert live[name] and replayed == sorted(live[name]), name
        assert result[name]["datapoints"] == sum(1 for r in replay_windows(engine) if r > 0), name
    (previewed,) = BacktestPreview(engine).preview(replace(request, behaviors=at_most[:1]))["behaviors"]
    assert previewed["supported"] and (previewed["datapoints"], previewed["alarms"]) == (
        result["at-most"]["datapoints"], result["at-most"]["alarms"])


def replay_windows(engine) -> list[float]:
    """The stored largest of every window, 0s included."""
    with engine.connect() as conn:
        return history.read_series(conn, SIZE, 0.0, (WINDOWS + 1) * WINDOW).values.tolist()
