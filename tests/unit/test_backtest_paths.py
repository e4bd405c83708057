"""The vectorised backtest path gives exactly the transitions of the per-datapoint engine.

Random fleets, random verdict sequences, random consecutive counts, windows and silences: the
numpy path (engine/vectorised.py) and the live engine (Evaluator + alarm.advance) replayed report
by report must produce the same events at the same times with the same values. Silences of
exactly the invalidation period, and replays that end exactly one period after a device's last
datapoint, check that both ask the one rule (``alarm.silent``) for "device silent -> invalidated".
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdefender.backtest.runner import BacktestRequest, _replayed, _vectorised, fast_path_threshold
from iotdefender.engine.alarm import EventType
from iotdefender.store.history import SeriesPoints

OPERATORS = ["less-than", "less-than-equals", "greater-than", "greater-than-equals"]
INVALIDATION_S = 3000.0


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict, list[tuple[str, float, dict]], float]:
    """A behavior, the reports of a few devices, and the end of the replay (INVALIDATION_S is the period)."""
    metric = draw(st.sampled_from(["aws:num-listening-tcp-ports", "aws:all-bytes-out", "cpu_usage"]))
    kind = "number" if metric == "cpu_usage" else "count"
    criteria: dict = {"comparisonOperator": draw(st.sampled_from(OPERATORS)),
                      "value": {kind: draw(st.integers(0, 6))},
                      "consecutiveDatapointsToAlarm": draw(st.integers(1, 3)),
                      "consecutiveDatapointsToClear": draw(st.integers(1, 3))}
    if metric == "aws:all-bytes-out" and draw(st.booleans()):
        criteria["durationSeconds"] = draw(st.sampled_from([60, 300, 900]))
    behavior = {"name": "b", "metric": metric, "criteria": criteria}
    reports = []
    for thing in range(draw(st.integers(1, 4))):
        at = 1_000_000.0
        for _ in range(draw(st.integers(0, 25))):
            # repeats, gaps of exactly the invalidation period and past it
            at += draw(st.sampled_from([0.0, 30.0, 300.0, 301.0, INVALIDATION_S, 5000.0]))
            reports.append((f"t{thing}", at, {metric: {kind: draw(st.integers(0, 8))}}))
    reports.sort(key=lambda r: r[1])  # arrival order: by time, ties in thing order
    end = 1_000_000.0 + 30_000
    if reports and draw(st.booleans()):  # the replay ends one period after some device's last datapoint
        last = {thing: at for thing, at, _ in reports}
        end = draw(st.sampled_from(sorted(last.values()))) + INVALIDATION_S + draw(st.sampled_from([-1.0, 0.0, 0.0, 1.0]))
    return behavior, reports, end


def _points(reports: list[tuple[str, float, dict]], metric: str) -> SeriesPoints:
    names = sorted({r[0] for r in reports})
    index = {n: i for i, n in enumerate(names)}
    return SeriesPoints(names, np.array([index[r[0]] for r in reports], dtype=np.int32),
                        np.array([r[1] for r in reports], dtype=np.float64),
                        np.array([next(iter(r[2][metric].values())) for r in reports], dtype=np.float64))


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_vectorised_path_matches_the_engine(scenario: tuple) -> None:
    behavior, reports, end = scenario
    other = behavior["criteria"]["value"]
    other = (next(iter(other.values())) + 2) % 7  # a second threshold, counted by the sweep
    request = BacktestRequest([behavior], 0.0, end, covers=lambda t: True, sweeps={"b": [float(other)]},
                              invalidation_period=INVALIDATION_S)
    threshold = fast_path_threshold(behavior)
    assert threshold is not None
    fast = _vectorised(request, behavior, _points(reports, behavior["metric"]), threshold)
    slow = _replayed(request, [behavior], [reports], len(reports), lambda f, m: None)[0]

    def canonical(events: list) -> list:
        return sorted((t, at, k, float(next(iter(v.values())))) for t, at, k, v in events)

    assert canonical(fast.events) == canonical(slow.events)
    assert fast.active_at_end == slow.active_at_end
    assert fast.datapoints == slow.datapoints == len(reports)
    # The sweep's counts are what the engine gives with that threshold.
    for row in fast.sweep:
        value = next(iter(row["threshold"].values()))
        tried = dict(behavior, criteria=dict(behavior["criteria"], value={k: value for k in behavior["criteria"]["value"]}))
        engine = _replayed(request, [tried], [reports], len(reports), lambda f, m: None)[0]
        alarms = [e[0] for e in engine.events if e[2] == EventType.IN_ALARM.value]
        assert (row["alarms"], row["devicesInAlarm"]) == (len(alarms), len(set(alarms))), row


def test_sweep_counts_devices_per_threshold() -> None:
    behavior = {"name": "ports", "metric": "aws:num-listening-tcp-ports",
                "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 3}}}
    reports = [(f"t{i}", 100.0 + j, {"aws:num-listening-tcp-ports": {"count": i}}) for j in range(3) for i in range(10)]
    request = BacktestRequest([behavior], 0.0, 1000.0, covers=lambda t: t != "t9", sweeps={"ports": [5.0, 8.0]},
                              invalidation_period=1e9)
    outcome = _vectorised(request, behavior, _points(reports, behavior["metric"]), 3.0)
    by_threshold = {s["threshold"]["count"]: s["devicesInAlarm"] for s in outcome.sweep}
    # t4..t8 exceed 3 (t9 is not covered); t6..t8 exceed 5; none exceed 8
    assert by_threshold == {3: 5, 5: 3, 8: 0}
    assert [s["current"] for s in outcome.sweep] == [True, False, False]
    assert {e[0] for e in outcome.events if e[2] == EventType.IN_ALARM.value} == {f"t{i}" for i in range(4, 9)}
    assert outcome.active_at_end == {f"t{i}" for i in range(4, 9)}
