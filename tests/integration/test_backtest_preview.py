"""The live preview counts what a full backtest counts, and a threshold change reuses the prepared history.

A small fleet's history laid down as columnar segments in a real SQLite database (as the compactor
stores it); for several thresholds and both a plain and a windowed behavior, the preview's devices
in alarm and alarms equal ``run_backtest``'s; the second call for the same series and range reads
nothing (``cached``); targets narrow the count; unsupported kinds say so instead of guessing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from iotdefender.backtest.preview import BacktestPreview
from iotdefender.backtest.runner import BacktestRequest, run_backtest
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head, writing
from iotdefender.store.history import SeriesPoints, write_segment

START = 1_700_000_000.0
HOURS = 6
DEVICES = 40
PORTS = "aws:num-listening-tcp-ports"
BYTES = "aws:all-bytes-out"


@pytest.fixture(scope="module")
def engine():
    engine = create_engine(sqlite_url(Path(tempfile.mkdtemp())))
    upgrade_to_head(engine)
    rng = np.random.default_rng(3)
    names = [f"d{i}" for i in range(DEVICES)]
    per_hour = 12
    thing_index = np.tile(np.arange(DEVICES, dtype=np.int32), per_hour)
    slots = np.repeat(np.arange(per_hour), DEVICES)
    for hour in range(HOURS):
        times = START + hour * 3600.0 + slots * 300.0 + thing_index
        ports = rng.integers(1, 7, len(times)).astype(np.float64)
        sent = np.round(rng.lognormal(np.log(1000), 0.8, len(times)))
        with writing(engine) as conn:
            write_segment(conn, PORTS, SeriesPoints(names, thing_index, times, ports))
            write_segment(conn, BYTES, SeriesPoints(names, thing_index, times, sent))
    return engine


def behavior(name: str, metric: str, threshold: int, **criteria) -> dict:
    return {"name": name, "metric": metric,
            "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": threshold}, **criteria}}


@pytest.mark.parametrize("threshold", [2, 4, 5, 6])
def test_preview_counts_what_the_full_backtest_counts(engine, threshold):
    behaviors = [behavior("ports", PORTS, threshold, consecutiveDatapointsToAlarm=2),
                 behavior("bytes", BYTES, threshold * 1000, durationSeconds=600, consecutiveDatapointsToClear=2)]
    request = BacktestRequest(behaviors, START, START + HOURS * 3600.0, covers=lambda thing: True)
    full = {b["behaviorName"]: b for b in run_backtest(engine, request)["behaviors"]}
    previewed = BacktestPreview(engine).preview(request)["behaviors"]
    for answer in previewed:
        expected = full[answer["behaviorName"]]
        assert answer["supported"] is True
        assert (answer["devicesInAlarm"], answer["alarms"], answer["devicesEvaluated"], answer["datapoints"]) == (
            expected["devicesInAlarm"], expected["alarms"], expected["devicesEvaluated"], expected["datapoints"])
    assert any(a["devicesInAlarm"] for a in previewed), "the fleet must alarm at some threshold for this to test"


def test_a_threshold_change_reuses_the_prepared_history(engine):
    preview = BacktestPreview(engine)
    first = BacktestRequest([behavior("ports", PORTS, 3)], START, START + 3600.0, covers=lambda t: True)
    second = BacktestRequest([behavior("ports", PORTS, 5)], START, START + 3600.0, covers=lambda t: True)
    assert preview.preview(first)["behaviors"][0]["cached"] is False
    moved = preview.preview(second)["behaviors"][0]
    assert moved["cached"] is True
    # The history there is: the first report at START, the last at the range's end (it includes its end).
    assert (moved["historyStart"], moved["historyEnd"]) == (START, START + 3600.0)
    late = BacktestRequest([behavior("ports", PORTS, 5)], START + HOURS * 3600.0 - 400, START + HOURS * 3600.0 + 9e4,
                           covers=lambda t: True)
    tail = preview.preview(late)["behaviors"][0]  # the range runs a day past the last report
    assert tail["historyEnd"] == START + (HOURS - 1) * 3600.0 + 11 * 300.0 + DEVICES - 1
    assert moved["devicesInAlarm"] < preview.preview(first)["behaviors"][0]["devicesInAlarm"]
    other_range = BacktestRequest([behavior("ports", PORTS, 5)], START, START + 7200.0, covers=lambda t: True)
    assert preview.preview(other_range)["behaviors"][0]["cached"] is False


def test_targets_narrow_the_count(engine):
    wanted = {"d1", "d2", "d3"}
    request = BacktestRequest([behavior("ports", PORTS, 1)], START, START + 3600.0, covers=lambda t: t in wanted)
    answer = BacktestPreview(engine).preview(request)["behaviors"][0]
    assert answer["devicesEvaluated"] == 3
    assert answer["devicesInAlarm"] == 3


def test_unsupported_and_empty_behaviors_say_so(engine):
    statistical = {"name": "stat", "metric": PORTS, "criteria": {"comparisonOperator": "less-than",
                                                                 "statisticalThreshold": {"statistic": "p90"}}}
    unknown_series = behavior("silent", "aws:num-disconnects", 1)
    request = BacktestRequest([statistical, unknown_series], START, START + 3600.0, covers=lambda t: True)
    stat, silent = BacktestPreview(engine).preview(request)["behaviors"]
    assert stat["supported"] is False and "run the backtest" in stat["reason"]
    assert silent["supported"] is True and silent["datapoints"] == 0 and "no retained datapoints" in silent["note"]


def test_history_larger_than_the_budget_is_answered_but_not_kept(engine):
    request = BacktestRequest([behavior("ports", PORTS, 3)], START, START + 3600.0, covers=lambda t: True)
    roomy = BacktestPreview(engine)
    tight = BacktestPreview(engine, max_bytes=1000)  # an hour of 40 devices is ~10 KB prepared
    assert roomy.preview(request)["behaviors"][0]["cached"] is False
    assert roomy.preview(request)["behaviors"][0]["cached"] is True
    first, again = tight.preview(request)["behaviors"][0], tight.preview(request)["behaviors"][0]
    assert first["cached"] is False and again["cached"] is False
    assert again["devicesInAlarm"] == first["devicesInAlarm"] == roomy.preview(request)["behaviors"][0]["devicesInAlarm"]
