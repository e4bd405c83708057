"""The pure engine: operators and value types, the alarm state machine, windows, fleet percentiles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdefender.engine.alarm import AlarmState, AlarmStatus, EventType, advance, counting_ids, invalidate
from iotdefender.engine.compare import compile_check, compliant, offending
from iotdefender.engine.evaluator import Evaluator
from iotdefender.engine.statistics import FleetStatistics


@pytest.mark.parametrize(
    "operator, threshold, observed, expected",
    [
        ("less-than", {"count": 10}, {"count": 9}, True),
        ("less-than", {"count": 10}, {"count": 10}, False),
        ("less-than-equals", {"count": 10}, {"count": 10}, True),
        ("less-than-equals", {"count": 10}, {"count": 11}, False),
        ("greater-than", {"count": 10}, {"count": 0}, False),  # AWS: count 0 vs greater-than 10 -> in-alarm
        ("greater-than", {"count": 10}, {"count": 11}, True),
        ("greater-than-equals", {"count": 10}, {"count": 10}, True),
        ("greater-than-equals", {"count": 10}, {"count": 9}, False),
        ("greater-than", {"number": 75.5}, {"number": 75.6}, True),
        ("less-than", {"number": -1.5}, {"number": -2}, True),
        ("in-port-set", {"ports": [443, 8883]}, {"ports": [443]}, True),
        ("in-port-set", {"ports": [443, 8883]}, {"ports": [443, 22]}, False),
        ("in-port-set", {"ports": [443]}, {"ports": []}, True),  # empty list is always compliant
        ("not-in-port-set", {"ports": [23]}, {"ports": [22, 443]}, True),
        ("not-in-port-set", {"ports": [23]}, {"ports": [23]}, False),
        ("in-cidr-set", {"cidrs": ["10.0.0.0/8"]}, {"cidrs": ["10.1.2.3"]}, True),
        ("in-cidr-set", {"cidrs": ["10.0.0.0/8"]}, {"cidrs": ["10.1.2.3", "192.168.1.1"]}, False),
        ("in-cidr-set", {"cidrs": ["2001:db8::/32"]}, {"cidrs": ["2001:db8::1"]}, True),
        ("in-cidr-set", {"cidrs": ["2001:db8::/32", "10.0.0.0/8"]}, {"cidrs": ["2001:db9::1"]}, False),
        ("in-cidr-set", {"cidrs": ["192.168.0.1"]}, {"cidrs": ["192.168.0.1"]}, True),  # bare IP = /32
        ("not-in-cidr-set", {"cidrs": ["12.8.0.0/16"]}, {"cidrs": ["12.8.1.1"]}, False),
        ("not-in-cidr-set", {"cidrs": ["12.8.0.0/16"]}, {"cidrs": ["13.0.0.1", "::1"]}, True),
        ("in-set", {"strings": ["a", "b"]}, {"strings": ["a"]}, True),
        ("in-set", {"strings": ["a", "b"]}, {"strings": ["c"]}, False),
        ("not-in-set", {"strings": ["root"]}, {"strings": ["admin"]}, True),
        ("in-set", {"numbers": [1.0, 2.0]}, {"numbers": [2]}, True),
        ("not-in-set", {"numbers": [1.0]}, {"numbers": [1.0, 5.0]}, False),
    ],
)
def test_every_operator_and_value_type(operator, threshold, observed, expected):
    assert compliant(operator, threshold, observed) is expected
    assert compile_check(operator, threshold)(observed) is expected  # what live evaluation calls


_SET_OPERATORS = ("in-port-set", "not-in-port-set", "in-set", "not-in-set")


def _verdict(check, observed):
    try:
        return check(observed)
    except (ValueError, TypeError) as error:
        return type(error)


@settings(max_examples=300, deadline=None)
@given(operator=st.sampled_from(_SET_OPERATORS),
       key=st.sampled_from(("ports", "numbers", "strings")),
       allowed=st.lists(st.integers(0, 12), max_size=6),
       observed=st.lists(st.integers(0, 12), max_size=8),
       observed_key=st.sampled_from(("ports", "numbers", "strings", "count")))
def test_a_compiled_set_check_answers_as_compliant_does(operator, key, allowed, observed, observed_key):
    """The compiled set check (C set operations) gives compliant's verdict, or raises as it does."""
    def shaped(name, values):
        if name == "strings":
            return {name: [str(v) for v in values]}
        if name == "numbers":
            return {name: [float(v) for v in values]}
        return {name: values if name == "ports" else len(values)}
    threshold, value = shaped(key, allowed), shaped(observed_key, observed)
    assert _verdict(compile_check(operator, threshold), value) == \
        _verdict(lambda v: compliant(operator, threshold, v), value)


def test_incomparable_values_raise():
    with pytest.raises(ValueError):
        compliant("less-than", {"count": 1}, {"ports": [1]})
    with pytest.raises(ValueError):
        compliant("in-port-set", {"ports": [1]}, {"count": 1})


def test_offending_values_are_the_evidence():
    assert offending("in-port-set", {"ports": [443]}, {"ports": [22, 443, 8080]}) == [22, 8080]
    assert offending("not-in-cidr-set", {"cidrs": ["10.0.0.0/8"]}, {"cidrs": ["10.0.0.1", "8.8.8.8"]}) == ["10.0.0.1"]


def run(sequence, to_alarm=1, to_clear=1):
    state, events, ids = AlarmState(), [], counting_ids()
    for i, violating in enumerate(sequence):
        state, transition = advance(state, violating, {"count": i}, float(i), to_alarm, to_clear, ids)
        if transition:
            events.append(transition)
    return state, events


def test_consecutive_datapoints_to_alarm_and_clear():
    state, events = run([True, True, False, True, True, True, False, False, True, False, False, False], 3, 2)
    kinds = [(e.event, e.at) for e in events]
    assert kinds == [(EventType.IN_ALARM, 5.0), (EventType.CLEARED, 7.0)]
    assert events[0].violation_id == events[1].violation_id and len(events[0].violation_id) == 32
    assert state.status is AlarmStatus.NORMAL


def test_a_transition_carries_every_datapoint_of_its_streak():
    # datapoint i has the value {"count": i}; a compliant datapoint breaks a violating streak
    _, events = run([True, True, False, True, True, True, False, True, False, False], 3, 2)
    raised, cleared = events
    assert [at for at, _ in raised.datapoints] == [3.0, 4.0, 5.0]  # not the broken streak 0, 1
    assert [v["count"] for _, v in raised.datapoints] == [3, 4, 5]
    assert [at for at, _ in cleared.datapoints] == [8.0, 9.0]  # not 6, broken by the violating 7
    _, single = run([True, False], 1, 1)
    assert [at for at, _ in single[0].datapoints] == [0.0] and [at for at, _ in single[1].datapoints] == [1.0]


def test_an_alarm_state_keeps_no_more_points_than_its_transition_needs():
    state, _ = run([True] * 2, 5, 1)
    assert len(state.streak_points) == 2
    state, _ = run([True] * 9, 5, 3)  # in alarm since datapoint 4: violating points are not kept
    assert state.streak_points == ()
    state, _ = run([True] * 5 + [False] * 2, 5, 3)
    assert [at for at, _ in state.streak_points] == [5.0, 6.0]


def test_in_alarm_refreshes_last_violation_without_new_events():
    state, events = run([True, True, True])
    assert [e.event for e in events] == [EventType.IN_ALARM]
    assert state.last_violation_value == {"count": 2} and state.violation_start == 0.0
    assert state.last_violation_time == 2.0


def test_invalidation_ends_an_alarm_once():
    state, _ = run([True])
    state, transition = invalidate(state, 100.0)
    assert transition.event is EventType.INVALIDATED and state.status is AlarmStatus.NORMAL
    assert invalidate(state, 101.0)[1] is None


@settings(max_examples=300)
@given(st.lists(st.one_of(st.booleans(), st.just("invalidate")), max_size=60),
       st.integers(1, 10), st.integers(1, 10))
def test_never_two_in_alarm_without_an_end_between(steps, to_alarm, to_clear):
    state, open_violation, ids = AlarmState(), None, counting_ids()
    for i, step in enumerate(steps):
        if step == "invalidate":
            state, transition = invalidate(state, float(i))
        else:
            state, transition = advance(state, step, {"count": 1}, float(i), to_alarm, to_clear, ids)
        if transition is None:
            continue
        if transition.event is EventType.IN_ALARM:
            assert open_violation is None, "in-alarm while an alarm is open"
            open_violation = transition.violation_id
        else:
            assert open_violation == transition.violation_id, "an end without its in-alarm"
            open_violation = None
        assert (state.status is AlarmStatus.IN_ALARM) == (open_violation is not None)


PROFILE = {"name": "p", "behaviors": [
    {"name": "ports", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]}}},
    {"name": "bytes", "metric": "aws:all-bytes-out",
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 1000}, "durationSeconds": 300}},
    {"name": "ml", "metric": "aws:all-bytes-in", "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}}},
]}


def commit(evaluator, evaluation):
    evaluator.apply(evaluation.changes)
    return [(e.event_type.value, e.behavior["name"]) for e in evaluation.events]


def test_evaluator_raises_and_clears_with_evidence():
    evaluator = Evaluator(counting_ids())
    first = evaluator.evaluate("t1", [PROFILE], {"aws:listening-tcp-ports": {"ports": [22, 443]}}, 1000.0)
    assert commit(evaluator, first) == [("in-alarm", "ports")]
    event = first.events[0]
    assert event.evidence["offendingValues"] == [22] and event.evidence["threshold"] == {"ports": [443]}
    assert event.criteria_type == "STATIC" and event.metric_value == {"ports": [22, 443]}
    again = evaluator.evaluate("t1", [PROFILE], {"aws:listening-tcp-ports": {"ports": [22]}}, 1300.0)
    assert commit(evaluator, again) == []
    cleared = evaluator.evaluate("t1", [PROFILE], {"aws:listening-tcp-ports": {"ports": []}}, 1600.0)
    assert commit(evaluator, cleared) == [("alarm-cleared", "ports")]
    assert cleared.events[0].violation_id == event.violation_id
    assert evaluator.remembered() == 0  # idle states are not kept


def test_the_evidence_of_a_consecutive_datapoints_alarm_holds_each_datapoint():
    profile = {"name": "p", "behaviors": [
        {"name": "ports", "metric": "aws:listening-tcp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [443]},
                      "consecutiveDatapointsToAlarm": 2, "consecutiveDatapointsToClear": 2}}]}
    evaluator = Evaluator(counting_ids())
    reports = [(1000.0, [22]), (1300.0, [23]), (1600.0, [443]), (1900.0, [443])]
    events = []
    for at, ports in reports:
        evaluation = evaluator.evaluate("t1", [profile], {"aws:listening-tcp-ports": {"ports": ports}}, at)
        evaluator.apply(evaluation.changes)
        events += evaluation.events
    assert [e.event_type.value for e in events] == ["in-alarm", "alarm-cleared"]
    assert events[0].evidence["datapoints"] == [{"timestamp": 1000.0, "value": {"ports": [22]}},
                                                {"timestamp": 1300.0, "value": {"ports": [23]}}]
    assert [d["timestamp"] for d in events[1].evidence["datapoints"]] == [1600.0, 1900.0]


def test_delta_metrics_sum_over_duration_seconds():
    evaluator = Evaluator(counting_ids(), time_scale=10.0)  # 300 s window -> 30 s
    assert commit(evaluator, evaluator.evaluate("t", [PROFILE], {"aws:all-bytes-out": {"count": 600}}, 100.0)) == []
    raised = evaluator.evaluate("t", [PROFILE], {"aws:all-bytes-out": {"count": 600}}, 110.0)
    assert commit(evaluator, raised) == [("in-alarm", "bytes")]
    assert raised.events[0].metric_value == {"count": 1200}
    assert len(raised.events[0].evidence["datapoints"]) == 2
    # 35 s later the first two datapoints left the 30 s window.
    cleared = evaluator.evaluate("t", [PROFILE], {"aws:all-bytes-out": {"count": 100}}, 145.0)
    assert commit(evaluator, cleared) == [("alarm-cleared", "bytes")]


def test_statistical_threshold_warm_up_then_percentile():
    profile = {"name": "s", "behaviors": [{"name": "big", "metric": "aws:all-bytes-out", "criteria": {
        "comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p90"},
        "durationSeconds": 300}}]}
    evaluator = Evaluator(counting_ids())
    for i in range(10):  # window 0: no threshold yet, no verdicts
        assert commit(evaluator, evaluator.evaluate(f"d{i}", [profile], {"aws:all-bytes-out": {"count": (i + 1) * 10}},
                                                    10.0 + i)) == []
    # window 1: threshold = p90 of window 0's values (10..100) = 91
    quiet = evaluator.evaluate("d0", [profile], {"aws:all-bytes-out": {"count": 50}}, 310.0)
    commit(evaluator, quiet)
    loud = evaluator.evaluate("d1", [profile], {"aws:all-bytes-out": {"count": 95}}, 311.0)
    assert quiet.events == []
    assert [e.event_type.value for e in loud.events] == ["in-alarm"]
    assert loud.events[0].evidence["threshold"] == {"count": pytest.approx(91.0)}
    assert loud.events[0].evidence["devices"] == 10 and loud.events[0].criteria_type == "STATISTICAL"


def test_too_few_devices_means_no_threshold():
    stats, changes = FleetStatistics(min_devices=5), {}
    for i in range(4):
        stats.observe(("p", "b"), "p50", 300, f"d{i}", float(i), 10.0, changes)
    stats.apply(changes)
    assert stats.threshold(("p", "b"), "p50", 300, 310.0, {}) is None


def test_window_sums_saturate_at_the_largest_count():
    """Two counts of 2**63-1 summed over durationSeconds exceeded what the store encodes, and
    (issue #11) failed the whole write batch with every other device's report in it."""
    from iotdefender.metrics_catalog import COUNT_MAX

    evaluator = Evaluator(counting_ids())
    profile = {"name": "p", "behaviors": [
        {"name": "in", "metric": "aws:all-bytes-in",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 1000000}, "durationSeconds": 300}}]}
    values = []
    for at in (1000.0, 1001.0):
        evaluation = evaluator.evaluate("t", [profile], {"aws:all-bytes-in": {"count": COUNT_MAX}}, at)
        commit(evaluator, evaluation)
        values += [e.metric_value for e in evaluation.events]
    assert values == [{"count": COUNT_MAX}]  # one in-alarm, its value a 64-bit count


@given(st.sampled_from(["less-than", "less-than-equals", "greater-than", "greater-than-equals"]),
       st.floats(min_value=0, max_value=1e6, allow_nan=False), st.integers(min_value=0, max_value=10**6 + 2))
def test_a_count_threshold_is_whole_and_judges_every_count_as_the_percentile_does(operator, percentile, count):
    from iotdefender.engine.compare import statistical_threshold

    threshold = statistical_threshold(operator, {"count": 1}, percentile)
    assert type(threshold["count"]) is int  # MetricValue.count is a Long
    assert compliant(operator, threshold, {"count": count}) == compliant(operator, {"number": percentile},
                                                                         {"count": count})


def test_a_statistical_count_threshold_is_written_as_a_whole_count():
    """p90 of a count metric is a fraction more often than not (18.2 ports); the evidence (served as
    JSON, shown by the console) carried it as ``{"count": 18.2}`` (``18.0`` when whole), which is
    no Long and read "18.2 ports"."""
    import orjson

    metric = "aws:num-listening-tcp-ports"
    profile = {"name": "s", "behaviors": [{"name": "ports", "metric": metric, "criteria": {
        "comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p90"},
        "durationSeconds": 300}}]}
    evaluator = Evaluator(counting_ids())
    for i in range(10):  # window 0: 2, 4, ..., 20 ports; p90 = 18.2
        commit(evaluator, evaluator.evaluate(f"d{i}", [profile], {metric: {"count": (i + 1) * 2}}, 10.0 + i))
    on_edge = evaluator.evaluate("d0", [profile], {metric: {"count": 18}}, 310.0)
    commit(evaluator, on_edge)
    loud = evaluator.evaluate("d1", [profile], {metric: {"count": 19}}, 311.0)
    assert on_edge.events == [] and [e.event_type.value for e in loud.events] == ["in-alarm"]
    assert b'"threshold":{"count":18}' in orjson.dumps(loud.events[0].evidence)


def test_a_statistical_number_threshold_stays_a_number():
    metric = "temperature"
    profile = {"name": "s", "behaviors": [{"name": "hot", "metric": metric, "criteria": {
        "comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p50"}, "durationSeconds": 300}}]}
    evaluator = Evaluator(counting_ids())
    for i in range(5):  # 1.5 .. 5.5: p50 = 3.5
        commit(evaluator, evaluator.evaluate(f"d{i}", [profile], {metric: {"number": i + 1.5}}, 10.0 + i))
    hot = evaluator.evaluate("d1", [profile], {metric: {"number": 3.5}}, 311.0)
    assert hot.events[0].evidence["threshold"] == {"number": 3.5}


_ADDRESSES = ("10.1.2.3", "192.168.1.7", "8.8.8.8", "2001:db8::1", "::1", "not-an-address")


@settings(max_examples=200, deadline=None)
@given(operator=st.sampled_from(("in-cidr-set", "not-in-cidr-set")),
       allowed=st.lists(st.sampled_from(("10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32", "8.8.8.8")), max_size=3),
       batches=st.lists(st.lists(st.sampled_from(_ADDRESSES), max_size=5), min_size=1, max_size=4))
def test_a_compiled_cidr_check_answers_as_compliant_does_with_addresses_seen_before(operator, allowed, batches):
    """Datapoints in a row through one compiled check (its memory of addresses filling up) get
    compliant's verdict each, a bad address raising as it does."""
    check = compile_check(operator, {"cidrs": allowed})
    for observed in batches:
        value = {"cidrs": observed}
        assert _verdict(check, value) == _verdict(lambda v: compliant(operator, {"cidrs": allowed}, v), value)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([0.0, 1.0, 2.5, 3.0, 300.0, 300.5]),
                          st.floats(-1e6, 1e6, allow_nan=False)), max_size=60))
def test_a_series_refilled_from_columns_is_what_refilled_makes_of_its_points(points):
    """``refilled_series`` (numpy, a takeover's read) and ``refilled`` (per-thing points, built on
    it) build each thing's window as ``_measure`` does, by the rule written out here: time order
    (stable), a repeated time's first point only."""
    import numpy as np

    from iotdefender.engine.evaluator import refilled, refilled_series

    things = [f"t{n}" for n in range(6)]
    by_thing: dict[str, list[tuple[float, float]]] = {}
    for thing, t, v in points:
        by_thing.setdefault(things[thing], []).append((t, v))
    expected: dict[str, tuple[tuple[float, float], ...]] = {}
    for thing, listed in by_thing.items():
        kept: list[tuple[float, float]] = []
        for t, v in sorted(listed, key=lambda point: point[0]):
            if not kept or kept[-1][0] != t:
                kept.append((t, v))
        expected[thing] = tuple(kept)
    got = refilled_series(things, np.array([p[0] for p in points], dtype=np.int32),
                          np.array([p[1] for p in points], dtype=np.float64),
                          np.array([p[2] for p in points], dtype=np.float64))
    assert got == expected
    assert refilled({thing: {"s": listed, "empty": []} for thing, listed in by_thing.items()}).by_thing == \
        {thing: {"s": window} for thing, window in expected.items()}
