"""The engine owns its state: evaluation records changes, and only ``apply`` makes them current.

A batch whose transaction fails must leave alarm states, windows and fleet statistics exactly as
they were; a batch that commits must leave them exactly as evaluating its reports one by one
would have (later reports of a batch see the earlier ones' effects).
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdefender.engine.alarm import counting_ids
from iotdefender.engine.evaluator import Evaluator, HeldThings, StaleChanges

PROFILE = {"name": "p", "behaviors": [
    {"name": "ports", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]}}},
    {"name": "bytes", "metric": "aws:all-bytes-out",  # a window: summed over durationSeconds
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 1000}, "durationSeconds": 300,
                  "consecutiveDatapointsToAlarm": 2}},
    {"name": "fleet", "metric": "aws:all-bytes-in",  # fleet statistics
     "criteria": {"comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p50"},
                  "durationSeconds": 300}},
]}


def report(ports: list[int], bytes_out: int, bytes_in: int) -> dict:
    return {"aws:listening-tcp-ports": {"ports": ports}, "aws:all-bytes-out": {"count": bytes_out},
            "aws:all-bytes-in": {"count": bytes_in}}


def warmed_up() -> Evaluator:
    """Six devices past the statistics' warm-up (the p50 of window 0 is 25), d0 in alarm on ports,
    d1 one violating datapoint away from an alarm on bytes."""
    evaluator = Evaluator(counting_ids())
    for i in range(6):
        evaluator.apply(evaluator.evaluate(f"d{i}", [PROFILE], report([443], 100, 10 * i), 10.0 + i).changes)
    evaluator.apply(evaluator.evaluate("d0", [PROFILE], report([22], 100, 10), 320.0).changes)
    evaluator.apply(evaluator.evaluate("d1", [PROFILE], report([443], 1200, 10), 321.0).changes)
    assert [key[:3] for key, _ in evaluator.alarms()] == [("d0", "p", "ports")]
    return evaluator


def test_a_batch_never_applied_leaves_every_state_as_it_was():
    evaluator = warmed_up()
    before = copy.deepcopy(evaluator)
    changes = evaluator.changes()
    events = []
    for thing, datapoints, at in [("d0", report([443], 100, 10), 330.0),      # clears d0's alarm
                                  ("d1", report([443], 100, 10), 331.0),      # d1's window stays past 1000
                                  ("d2", report([22], 100, 10_000), 332.0),   # two alarms
                                  ("d3", report([443], 100, 10_000), 333.0),  # above the fleet's p50
                                  ("d4", report([443], 100, 10), 620.0)]:     # a new window: statistics roll
        events += evaluator.evaluate(thing, [PROFILE], datapoints, at, changes).events
    events += evaluator.invalidate([key for key, _ in evaluator.alarms()], {}, 640.0, "test", changes).events
    assert {(e.thing_name, e.behavior["name"], e.event_type.value) for e in events} >= {
        ("d0", "ports", "alarm-cleared"), ("d1", "bytes", "in-alarm"), ("d2", "ports", "in-alarm"),
        ("d2", "fleet", "in-alarm"), ("d3", "fleet", "in-alarm")}
    assert changes.states and changes.windows and changes.statistics  # the batch did touch all three
    assert evaluator == before  # the transaction failed: nothing applied, nothing changed
    evaluator.apply(changes)
    assert evaluator != before  # (the comparison sees a change when there is one)
    assert {key[0] for key, state in evaluator.alarms()} == {"d1", "d2", "d3"}


def test_a_failed_batch_is_retried_as_if_it_never_ran():
    """The resend of a failed batch gives the events the first attempt would have given."""
    failed, fresh = warmed_up(), warmed_up()
    batch = [("d1", report([443], 100, 10), 331.0), ("d4", report([22], 100, 10_000), 332.0),
             ("d5", report([443], 100, 10), 620.0)]

    def run(evaluator: Evaluator) -> list:
        changes = evaluator.changes()
        events = [e for thing, datapoints, at in batch
                  for e in evaluator.evaluate(thing, [PROFILE], datapoints, at, changes).events]
        return [(e.thing_name, e.behavior["name"], e.event_type.value, e.metric_value, e.evidence) for e in events], \
            changes

    first, _ = run(failed)  # dropped: its transaction failed
    failed.new_id, fresh.new_id = counting_ids(100), counting_ids(100)  # the same ids from here on
    again, changes = run(failed)
    expected, expected_changes = run(fresh)
    assert first == again == expected
    failed.apply(changes)
    fresh.apply(expected_changes)
    assert failed == fresh


def test_a_change_set_built_on_an_older_state_is_refused():
    evaluator = warmed_up()
    one, other = evaluator.changes(), evaluator.changes()
    evaluator.evaluate("d5", [PROFILE], report([22], 100, 10), 330.0, one)
    evaluator.evaluate("d0", [PROFILE], report([443], 100, 10), 331.0, other)
    evaluator.apply(one)
    with pytest.raises(StaleChanges):
        evaluator.apply(other)  # built before ``one`` was applied: applying both would lose an update
    assert [key[0] for key, _ in evaluator.alarms()] == ["d0", "d5"]


@st.composite
def fleets(draw: st.DrawFn) -> list[list[tuple[str, dict, float]]]:
    """Reports of up to 7 devices over a few statistics windows, cut into batches."""
    reports = []
    at = 0.0
    for _ in range(draw(st.integers(1, 60))):
        at += draw(st.sampled_from([0.0, 1.0, 40.0, 150.0, 299.0, 301.0]))
        thing = f"d{draw(st.integers(0, 6))}"
        reports.append((thing, report(draw(st.sampled_from([[443], [22], [], [443, 8883]])),
                                      draw(st.integers(0, 700)), draw(st.integers(0, 100))), at))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(reports) - 1, 1)), max_size=6)))
    return [reports[a:b] for a, b in zip([0, *cuts], [*cuts, len(reports)]) if reports[a:b]]


@settings(max_examples=200, deadline=None)
@given(fleets())
def test_batching_changes_no_result(batches: list[list[tuple[str, dict, float]]]) -> None:
    """One change set per batch gives the events and the final state of applying report by report."""
    one_by_one, batched = Evaluator(counting_ids()), Evaluator(counting_ids())
    expected, got = [], []
    for batch in batches:
        for thing, datapoints, at in batch:
            evaluation = one_by_one.evaluate(thing, [PROFILE], datapoints, at)
            one_by_one.apply(evaluation.changes)
            expected += evaluation.events
        changes = batched.changes()
        for thing, datapoints, at in batch:
            got += batched.evaluate(thing, [PROFILE], datapoints, at, changes).events
        batched.apply(changes)
    assert got == expected
    assert batched == one_by_one


def test_loading_some_things_replaces_exactly_their_states_and_windows():
    """A cluster node taking over a partition: the chosen things start from the durable states
    given (windows empty), every other thing keeps what it had, change sets from before are stale."""
    evaluator = warmed_up()
    stale = evaluator.changes()
    in_alarm = dict(evaluator.alarms())[("d0", "p", "ports", "")]
    durable = {("d1", "p", "ports", ""): in_alarm,  # d1 is chosen: loaded
               ("d0", "p", "bytes", ""): in_alarm}  # d0 is not: ignored, its memory kept
    evaluator.load_things(lambda thing: thing == "d1", durable)
    assert sorted(key[:3] for key, _ in evaluator.alarms()) == [("d0", "p", "ports"), ("d1", "p", "ports")]
    assert evaluator.remembered() == 2  # d1's streak on bytes (not in the durable states) is gone
    with pytest.raises(StaleChanges):
        evaluator.apply(stale)
    windows = evaluator.evaluate("d1", [PROFILE], report([443], 500, 10), 330.0).changes.windows
    assert windows[("d1", "aws:all-bytes-out")] == [(330.0, 500.0)]  # started empty
    windows = evaluator.evaluate("d0", [PROFILE], report([22], 900, 10), 330.0).changes.windows
    assert windows[("d0", "aws:all-bytes-out")] == [(10.0, 100.0), (320.0, 100.0), (330.0, 900.0)]  # kept


def test_loading_with_the_held_things_named_drops_only_those_and_asks_nobody_about_the_rest():
    """A takeover names what it held of the chosen things (found outside its lock): only those
    are dropped, and the selection is not asked about any thing held here."""
    evaluator = warmed_up()
    in_alarm = dict(evaluator.alarms())[("d0", "p", "ports", "")]
    assert {"d0", "d1"} <= set(evaluator.things_held())
    asked: list[str] = []

    def owns(thing: str) -> bool:
        asked.append(thing)
        return thing == "d1"

    held = HeldThings(evaluator.things_held(), ["d1"], may_have_grown=False)
    evaluator.load_things(owns, {("d1", "p", "ports", ""): in_alarm}, held=held, selected=True)
    assert asked == []
    assert sorted(key[:3] for key, _ in evaluator.alarms()) == [("d0", "p", "ports"), ("d1", "p", "ports")]
    assert evaluator.remembered() == 2  # d1's streak on bytes is gone, d0's alarm kept
    windows = evaluator.evaluate("d1", [PROFILE], report([443], 500, 10), 330.0).changes.windows
    assert windows[("d1", "aws:all-bytes-out")] == [(330.0, 500.0)]  # its window started empty
    windows = evaluator.evaluate("d0", [PROFILE], report([22], 900, 10), 330.0).changes.windows
    assert windows[("d0", "aws:all-bytes-out")] == [(10.0, 100.0), (320.0, 100.0), (330.0, 900.0)]  # kept


def test_held_things_that_may_have_grown_ask_about_only_the_things_added_since_the_listing():
    """A node giving partitions up sorts the things it held outside its lock; a thing added since
    (a batch still in a group commit) is asked about at the drop, the listed ones are not."""
    evaluator = warmed_up()
    listed = evaluator.things_held()
    assert listed == {f"d{i}" for i in range(6)}
    held = HeldThings.sorted_by(listed, lambda thing: thing in ("d1", "d6"))
    assert list(held.selected) == ["d1"]
    for late in ("d6", "d7"):  # added after the listing
        evaluator.apply(evaluator.evaluate(late, [PROFILE], report([22], 900, 10), 330.0).changes)
    asked: list[str] = []

    def owns(thing: str) -> bool:
        asked.append(thing)
        return thing in ("d1", "d6")

    evaluator.forget_things(owns, held)
    assert sorted(asked) == ["d6", "d7"]
    assert evaluator.things_held() == {"d0", "d2", "d3", "d4", "d5", "d7"}
    assert not HeldThings(listed, ["d1"], may_have_grown=False).may_have_grown


def test_forgetting_some_things_drops_only_their_states_and_windows():
    evaluator = warmed_up()
    evaluator.forget_things(lambda thing: thing == "d0")
    assert evaluator.alarms() == []
    assert evaluator.evaluate("d0", [PROFILE], report([443], 100, 10), 330.0).events == []  # nothing to clear
    changes = evaluator.evaluate("d1", [PROFILE], report([443], 100, 10), 331.0).changes
    assert [v for _, v in changes.windows[("d1", "aws:all-bytes-out")]] == [100.0, 1200.0, 100.0]  # kept


def test_the_windows_of_a_device_silent_past_the_horizon_are_dropped_and_nothing_it_is_judged_on_changes():
    """A window is trimmed when its device reports: one that never did again kept its last hour
    forever. Dropped, the device's next report is judged as with the window it would have had."""
    kept, pruned = Evaluator(counting_ids()), Evaluator(counting_ids())
    for evaluator in (kept, pruned):
        evaluator.apply(evaluator.evaluate("silent", [PROFILE], report([443], 900, 10), 10.0).changes)
        evaluator.apply(evaluator.evaluate("busy", [PROFILE], report([443], 900, 10), 3000.0).changes)
    assert pruned.forget_expired_windows(3000.0) == 0  # "silent" is 2,990 s old: within the hour
    assert pruned.forget_expired_windows(3700.0) == 1
    assert pruned.things_held() == {"busy"} and kept.things_held() == {"silent", "busy"}
    for thing in ("silent", "busy"):
        judged = [evaluator.evaluate(thing, [PROFILE], report([443], 900, 10), 3710.0) for evaluator in (kept, pruned)]
        assert judged[0].events == judged[1].events
        assert judged[0].changes.windows == judged[1].changes.windows
