"""A restart refills the windows of ``durationSeconds`` from the stored datapoints: evaluating the
rest of a history after a restart gives exactly the events of evaluating it without one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from iotdefender.engine.alarm import counting_ids
from iotdefender.engine.evaluator import Evaluator

PROFILE = {"name": "p", "behaviors": [
    {"name": "bytes", "metric": "aws:all-bytes-out",
     "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 1000}, "durationSeconds": 3600}},
    {"name": "bytes5", "metric": "aws:all-bytes-out",
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 700}, "durationSeconds": 300,
                  "consecutiveDatapointsToAlarm": 2}},
    {"name": "largest", "metric": "aws:message-byte-size",
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 500}, "durationSeconds": 900}},
    {"name": "ports", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]}}},
]}
SERIES = ("aws:all-bytes-out", "aws:message-byte-size")

reports = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 2000),
                             st.integers(0, 700), st.integers(0, 700)), min_size=1, max_size=30)


def run(evaluator: Evaluator, items: list[tuple[str, float, int, int]]) -> list[tuple]:
    found = []
    for thing, at, sent, largest in items:
        result = evaluator.evaluate(thing, [PROFILE], {"aws:all-bytes-out": {"count": sent},
                                                       "aws:message-byte-size": {"count": largest}}, at)
        evaluator.apply(result.changes)
        found += [(e.thing_name, e.behavior["name"], e.event_type.value, e.at, str(e.metric_value))
                  for e in result.events]
    return found


@settings(max_examples=200, deadline=None)
@given(reports, st.integers(0, 30))
def test_a_restart_anywhere_changes_no_event(steps, cut):
    at, items = 0.0, []
    for thing, gap, sent, largest in steps:
        at += gap
        items.append((thing, at, sent, largest))
    cut = min(cut, len(items))
    alone = run(Evaluator(counting_ids()), items)

    before = Evaluator(counting_ids())
    first = run(before, items[:cut])
    states = dict(before._states)
    # What the store kept of the first part (every datapoint, any order): the windows' source.
    stored: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for thing, t, sent, largest in reversed(items[:cut]):
        stored.setdefault(thing, {}).setdefault(SERIES[0], []).append((t, float(sent)))
        stored[thing].setdefault(SERIES[1], []).append((t, float(largest)))
    after = Evaluator(counting_ids())
    after.load(states, stored)
    second = run(after, items[cut:])
    assert first + second == alone


def test_windowed_series_are_those_summed_or_maximised():
    assert Evaluator(counting_ids()).windowed_series([PROFILE]) == set(SERIES)
