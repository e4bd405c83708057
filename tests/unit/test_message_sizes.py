"""aws:message-byte-size: each window's largest and smallest message, which behavior reads which,
windows without messages, the cluster merge of broker nodes' parts, and the engine over them."""

from __future__ import annotations

import msgspec
import pytest

from iotdefender.controlplane.behavior_rules import validate_profile_behaviors
from iotdefender.cloud.aggregator import Aggregator, ClientWindow, DimensionSpec, merge_windows, pack, unpack
from iotdefender.cloud.cluster_windows import CloudWindowMessage, decode, encode
from iotdefender.engine.alarm import counting_ids
from iotdefender.engine.evaluator import Evaluator
from iotdefender.engine.series import behavior_series
from iotdefender.metrics_catalog import BUILTIN_METRICS, NUMERIC_OPERATORS, size_series

SIZE = "aws:message-byte-size"
SMALLEST = "aws:message-byte-size|smallest"


def window_points(agg: Aggregator, window: int, thing: str = "d", dimensions=()):  # type: ignore[no-untyped-def]
    return agg.datapoints(thing, agg.take(window).get(thing), (window + 1) * agg.window_s, dimensions)


def test_a_window_gives_its_largest_and_smallest_message_per_series():
    agg = Aggregator(window_s=10)
    agg.message_sent("d", "telemetry/t", 1, at=1)
    agg.message_sent("d", "telemetry/t", 100, at=2)
    agg.message_sent("d", "other", 50, at=3)
    points = window_points(agg, 0, dimensions=[DimensionSpec(SIZE, "t", "IN", ("telemetry/#",)),
                                               DimensionSpec(SIZE, "t", "NOT_IN", ("telemetry/#",))])
    assert points[SIZE] == {"count": 100} and points[SMALLEST] == {"count": 1}
    assert points["aws:message-byte-size|t|IN"] == {"count": 100}
    assert points["aws:message-byte-size|t|IN|smallest"] == {"count": 1}
    assert points["aws:message-byte-size|t|NOT_IN"] == {"count": 50}
    assert points["aws:message-byte-size|t|NOT_IN|smallest"] == {"count": 50}


def test_a_window_without_messages_has_no_message_size():
    agg = Aggregator(window_s=10)
    agg.message_sent("d", "telemetry/t", 100, at=1)
    agg.connect_attempt("d", "10.0.0.1", True, at=12)  # window 1: connected, no message
    agg.message_sent("d", "other", 7, at=13)  # ... on a topic outside the dimension
    dimension = [DimensionSpec(SIZE, "t", "IN", ("telemetry/#",))]
    assert window_points(agg, 0, dimensions=dimension)[SMALLEST] == {"count": 100}
    second = window_points(agg, 1, dimensions=dimension)
    assert second[SIZE] == second[SMALLEST] == {"count": 7}
    assert "aws:message-byte-size|t|IN" not in second and "aws:message-byte-size|t|IN|smallest" not in second
    idle = window_points(agg, 2, dimensions=dimension)
    assert not any(key.startswith(SIZE) for key in idle) and idle["aws:num-messages-sent"] == {"count": 0}


def test_an_empty_message_is_a_message_of_zero_bytes():
    agg = Aggregator(window_s=10)
    agg.message_sent("d", "t", 0, at=1)
    agg.message_sent("d", "t", 30, at=2)
    points = window_points(agg, 0)
    assert points[SIZE] == {"count": 30} and points[SMALLEST] == {"count": 0}


def test_counters_without_topics_give_the_extremes_of_their_averages():
    agg = Aggregator(window_s=10)
    agg.message_counts("d", sent=4, sent_bytes=40, received=0, at=1)  # NATS /connz: 10 bytes on average
    agg.message_counts("d", sent=2, sent_bytes=400, received=1, at=2)
    points = window_points(agg, 0)
    assert points[SIZE] == {"count": 200} and points[SMALLEST] == {"count": 10}


def test_broker_nodes_parts_merge_the_smallest_as_a_minimum():
    first, second = ClientWindow(), ClientWindow()
    Aggregator._sent(first, "t", 1, 100)
    Aggregator._sent(first, "t", 1, 40)
    Aggregator._sent(second, "t", 1, 3)
    Aggregator._sent(second, "t", 1, 90)
    Aggregator._sent(second, "u", 1, 500)
    merged = merge_windows([first, second])
    assert merged.sent_max_bytes == {"t": 100, "u": 500}
    assert merged.sent_min_bytes == {"t": 3, "u": 500}
    assert merge_windows([second, first]) == merged
    agg = Aggregator(window_s=10)
    agg.add_window(0, "d", merged)
    points = window_points(agg, 0)
    assert points[SIZE] == {"count": 500} and points[SMALLEST] == {"count": 3}


def test_a_part_from_a_node_without_the_smallest_takes_its_largest():
    """A broker node of the release before the smallest was kept encodes no sent_min_bytes."""
    old = msgspec.msgpack.encode({"sent": {"t": 2}, "sent_max_bytes": {"t": 80}})
    part = msgspec.msgpack.decode(old, type=ClientWindow)
    assert part.sent_min_bytes == {}
    new = ClientWindow()
    Aggregator._sent(new, "t", 1, 120)
    merged = merge_windows([part, new])
    assert merged.sent_max_bytes == {"t": 120} and merged.sent_min_bytes == {"t": 80}
    agg = Aggregator(window_s=10)
    agg.add_window(0, "d", part)
    assert window_points(agg, 0)[SMALLEST] == {"count": 80}


class OlderClientWindow(msgspec.Struct):
    """A device's window part as the release before the smallest read it."""

    sent: dict[str | None, int] = {}
    sent_max_bytes: dict[str | None, int] = {}


class OlderMessage(msgspec.Struct, tag_field="kind", tag="cloud-window"):
    thing: str
    window: int
    window_s: float
    node: str
    part: OlderClientWindow
    version: int = 1


def test_the_smallest_travels_between_nodes_and_a_node_of_the_release_before_reads_the_part():
    part = ClientWindow(sent={"t": 2}, sent_max_bytes={"t": 100}, sent_min_bytes={"t": 1})
    message = CloudWindowMessage("dev", 3, 2.0, "node-a", part)
    assert decode(encode(message)) == message

    older = msgspec.msgpack.decode(encode(message), type=OlderMessage)
    assert older.part.sent_max_bytes == {"t": 100}


class FullClientWindow(msgspec.Struct):
    """A device's window part as the release before idle fields were left out reads and writes it:
    every field, always encoded."""

    connection_attempts: int = 0
    disconnects: int = 0
    auth_failures: dict[str | None, int] = {}
    sent: dict[str | None, int] = {}
    sent_max_bytes: dict[str | None, int] = {}
    sent_min_bytes: dict[str | None, int] = {}
    received: dict[str | None, int] = {}
    source_ips: dict[str, None] = {}
    last_connect_ok: float = 0.0
    last_disconnect: float = 0.0


def test_a_part_leaves_out_its_idle_fields_and_both_releases_read_each_others():
    """A window's parts cross a detect node's one NATS connection all at once at the window's end,
    ahead of the reports published meanwhile (bench/window_end_reports.py). A device that only sent
    messages was 211 bytes with every field's name; the idle ones are now left out, and a node of
    the release before, which encodes them all, reads the parts as before (msgspec fills a missing
    field with its default), and is read."""
    part = ClientWindow(sent={"telemetry": 3}, sent_max_bytes={"telemetry": 200}, sent_min_bytes={"telemetry": 120})
    packed = pack(part)
    assert len(packed) < 100
    assert b"source_ips" not in packed and b"connection_attempts" not in packed
    assert msgspec.msgpack.decode(packed, type=FullClientWindow) == FullClientWindow(
        sent={"telemetry": 3}, sent_max_bytes={"telemetry": 200}, sent_min_bytes={"telemetry": 120})
    full = FullClientWindow(connection_attempts=1, sent={"t": 2}, sent_max_bytes={"t": 9}, sent_min_bytes={"t": 9},
                            source_ips={"10.0.0.1": None}, last_connect_ok=12.5)
    assert unpack(msgspec.msgpack.encode(full)) == ClientWindow(
        connection_attempts=1, sent={"t": 2}, sent_max_bytes={"t": 9}, sent_min_bytes={"t": 9},
        source_ips={"10.0.0.1": None}, last_connect_ok=12.5)
    assert unpack(pack(ClientWindow())) == ClientWindow()


@pytest.mark.parametrize("operator, series", [
    ("less-than", SIZE), ("less-than-equals", SIZE), ("greater-than", SMALLEST), ("greater-than-equals", SMALLEST)])
def test_at_least_behaviors_read_the_smallest_and_at_most_ones_the_largest(operator, series):
    behavior = {"name": "b", "metric": SIZE, "criteria": {"comparisonOperator": operator, "value": {"count": 5}}}
    assert behavior_series(behavior) == series
    statistical = {"name": "b", "metric": SIZE, "criteria": {
        "comparisonOperator": operator, "statisticalThreshold": {"statistic": "p90"}, "durationSeconds": 300}}
    assert behavior_series(statistical) == series
    dimensioned = dict(behavior, metricDimension={"dimensionName": "t", "operator": "NOT_IN"})
    assert behavior_series(dimensioned) == "aws:message-byte-size|t|NOT_IN" + series[len(SIZE):]


def test_ml_and_retained_sizes_read_the_largest_and_only_numeric_operators_apply():
    ml = {"name": "b", "metric": SIZE, "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}}}
    assert behavior_series(ml) == SIZE
    assert behavior_series({"metric": SIZE}) == SIZE
    assert size_series(SMALLEST) == size_series(SIZE) == (SIZE, SMALLEST)
    assert size_series("aws:message-byte-size|t|IN|smallest") == ("aws:message-byte-size|t|IN",
                                                                  "aws:message-byte-size|t|IN|smallest")
    assert BUILTIN_METRICS[SIZE].operators == NUMERIC_OPERATORS  # no set operators for a count


@pytest.mark.parametrize("operator, value", [("in-set", {"numbers": [1]}), ("not-in-set", {"numbers": [1]}),
                                             ("in-cidr-set", {"cidrs": ["10.0.0.0/8"]}),
                                             ("in-port-set", {"ports": [80]})])
def test_set_operators_are_refused_for_the_message_size(operator, value):
    behavior = {"name": "b", "metric": SIZE, "criteria": {"comparisonOperator": operator, "value": value}}
    assert validate_profile_behaviors([behavior], {}, {})


def run(agg: Aggregator, evaluator: Evaluator, profile, until: float, thing: str = "d"):  # type: ignore[no-untyped-def]
    """Close every window ended by ``until`` and evaluate it, as the service does; the events."""
    found = []
    for window in agg.closed_windows(until):
        end = (window + 1) * agg.window_s
        evaluation = evaluator.evaluate(thing, [profile], window_points(agg, window, thing), end)
        evaluator.apply(evaluation.changes)
        found += [(e.event_type.value, e.metric_value) for e in evaluation.events]
    return found


AT_LEAST_5 = {"name": "p", "behaviors": [{"name": "min", "metric": SIZE, "criteria": {
    "comparisonOperator": "greater-than-equals", "value": {"count": 5}}}]}


def test_one_message_then_idle_raises_no_alarm():
    agg, evaluator = Aggregator(window_s=300), Evaluator(counting_ids())
    agg.connect_attempt("d", "10.0.0.1", True, at=1)
    agg.message_sent("d", "t", 100, at=2)
    assert run(agg, evaluator, AT_LEAST_5, 301) == []
    agg.seen.add("d")
    assert run(agg, evaluator, AT_LEAST_5, 301 + 3000) == []  # ten idle windows


def test_a_small_message_among_larger_ones_raises_the_alarm():
    agg, evaluator = Aggregator(window_s=300), Evaluator(counting_ids())
    agg.message_sent("d", "t", 1, at=1)
    agg.message_sent("d", "t", 100, at=2)
    for at in range(3, 900, 3):
        agg.message_sent("d", "t", 100, at=at)
    assert run(agg, evaluator, AT_LEAST_5, 901) == [("in-alarm", {"count": 1}), ("alarm-cleared", {"count": 100})]


def test_idle_windows_neither_count_nor_break_consecutive_datapoints():
    profile = {"name": "p", "behaviors": [{"name": "min", "metric": SIZE, "criteria": {
        "comparisonOperator": "greater-than", "value": {"count": 5},
        "consecutiveDatapointsToAlarm": 2, "consecutiveDatapointsToClear": 2}}]}
    agg, evaluator = Aggregator(window_s=10), Evaluator(counting_ids())
    agg.message_sent("d", "t", 2, at=1)  # window 0: violating; windows 1, 2 idle
    agg.message_sent("d", "t", 3, at=31)  # window 3: violating again
    assert run(agg, evaluator, profile, 41) == [("in-alarm", {"count": 3})]
    agg.message_sent("d", "t", 50, at=41)  # window 4: compliant; 5 idle; 6 compliant
    agg.message_sent("d", "t", 60, at=61)
    assert run(agg, evaluator, profile, 71) == [("alarm-cleared", {"count": 60})]


def test_a_duration_takes_the_smallest_of_its_windows_for_at_least_and_the_largest_for_at_most():
    profile = {"name": "p", "behaviors": [
        {"name": "min", "metric": SIZE, "criteria": {"comparisonOperator": "greater-than-equals",
                                                     "value": {"count": 5}, "durationSeconds": 600}},
        {"name": "max", "metric": SIZE, "criteria": {"comparisonOperator": "less-than-equals",
                                                     "value": {"count": 150}, "durationSeconds": 600}}]}
    agg, evaluator = Aggregator(window_s=300), Evaluator(counting_ids())
    agg.message_sent("d", "t", 1, at=1)  # window 0: 1 and 200 bytes
    agg.message_sent("d", "t", 200, at=2)
    agg.message_sent("d", "t", 100, at=301)  # window 1: 100 bytes; the 600 s still holds window 0
    agg.message_sent("d", "t", 100, at=601)  # window 2: only windows 1 and 2 are inside
    events = []
    for window in agg.closed_windows(901):
        evaluation = evaluator.evaluate("d", [profile], window_points(agg, window), (window + 1) * 300.0)
        evaluator.apply(evaluation.changes)
        events += [(e.behavior["name"], e.event_type.value, e.metric_value) for e in evaluation.events]
    assert events == [("min", "in-alarm", {"count": 1}), ("max", "in-alarm", {"count": 200}),
                      ("min", "alarm-cleared", {"count": 100}), ("max", "alarm-cleared", {"count": 100})]


def test_a_statistical_at_least_behavior_ranks_the_fleets_smallest_messages():
    profile = {"name": "p", "behaviors": [{"name": "min", "metric": SIZE, "criteria": {
        "comparisonOperator": "greater-than-equals", "statisticalThreshold": {"statistic": "p10"},
        "durationSeconds": 300}}]}
    agg, evaluator = Aggregator(window_s=300), Evaluator(counting_ids())
    for window in range(2):
        for i in range(10):  # every device's largest is 1000; its smallest 10, 20, ... 100
            agg.message_sent(f"d{i}", "t", 1000, at=window * 300 + 1)
            agg.message_sent(f"d{i}", "t", 10 * (i + 1) if window == 0 or i != 5 else 5, at=window * 300 + 2)
    raised = {}
    for window in agg.closed_windows(601):
        data = agg.take(window)
        for i in range(10):
            thing = f"d{i}"
            evaluation = evaluator.evaluate(thing, [profile], agg.datapoints(thing, data.get(thing), (window + 1) * 300),
                                            (window + 1) * 300)
            evaluator.apply(evaluation.changes)
            raised.update({thing: (e.event_type.value, e.metric_value, e.evidence.get("threshold"))
                           for e in evaluation.events})
    # p10 of the smallest messages 10..100 is 19 (of the largest, all 1000, it would be 1000 and
    # every device would alarm): in window 1, d5's 5-byte message and d0's 10-byte one are below it.
    assert raised == {"d0": ("in-alarm", {"count": 10}, {"count": 19}),
                      "d5": ("in-alarm", {"count": 5}, {"count": 19})}
