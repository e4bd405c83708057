"""Cloud-side aggregation on the window grid, and MQTT topic filters."""

from __future__ import annotations

import pytest

from iotdefender.cloud.aggregator import Aggregator, DimensionSpec, dimension_specs, merge_windows, pack, unpack
from iotdefender.cloud.topic_filter import matches
from iotdefender.contract.topic_filters import filter_problem
from iotdefender.metrics_catalog import AWAY_SERIES


@pytest.mark.parametrize("topic_filter, topic, expected", [
    ("a/b", "a/b", True), ("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/#", "a/b/c", True),
    ("a/#", "a", True), ("#", "anything/at/all", True), ("+/b", "a/b", True), ("a/b", "a/c", False),
    ("things/${iot:ClientId}/#", "things/dev1/x", True), ("things/${iot:ClientId}/#", "things/dev2/x", False),
])
def test_topic_filters(topic_filter, topic, expected):
    assert matches(topic_filter, topic, "dev1") is expected


@pytest.mark.parametrize("topic_filter, valid", [
    ("#", True), ("a/#", True), ("+", True), ("+/+/#", True), ("a//b", True), ("things/${iot:ClientId}/#", True),
    ("a/#/b", False), ("a/b#", False), ("#/", False), ("a/b+", False), ("+a", False), ("a/++/b", False),
])
def test_filters_mqtt_forbids_are_named(topic_filter, valid):
    assert (filter_problem(topic_filter) is None) is valid


def test_every_window_closes_and_idle_devices_get_zero():
    agg = Aggregator(window_s=10)
    agg.message_sent("d1", "telemetry/t", 100, at=5)
    agg.message_sent("d1", "other", 700, at=6)
    agg.connect_attempt("d1", "10.0.0.1", True, at=1)
    agg.connect_attempt("d2", "10.0.0.2", False, at=2)
    assert agg.closed_windows(9) == []
    assert agg.closed_windows(35) == [0, 1, 2]  # the empty windows 1 and 2 close too
    first = agg.take(0)
    d1 = agg.datapoints("d1", first.get("d1"), 10, [DimensionSpec("aws:num-messages-sent", "t", "IN", ("telemetry/#",)),
                                                     DimensionSpec("aws:message-byte-size", "t", "NOT_IN",
                                                                   ("telemetry/#",))])
    assert d1["aws:num-messages-sent"] == {"count": 2} and d1["aws:message-byte-size"] == {"count": 700}
    assert d1["aws:num-messages-sent|t|IN"] == {"count": 1} and d1["aws:message-byte-size|t|NOT_IN"] == {"count": 700}
    assert d1["aws:source-ip-address"] == {"cidrs": ["10.0.0.1"]}
    d2 = agg.datapoints("d2", first.get("d2"), 10)
    assert d2["aws:num-authorization-failures"] == {"count": 1} and d2["aws:num-connection-attempts"] == {"count": 1}
    idle = agg.datapoints("d1", agg.take(1).get("d1"), 20)
    assert idle.pop("aws:source-ip-address") == {"cidrs": ["10.0.0.1"]}  # still connected from there
    assert all(v == {"count": 0} for v in idle.values())
    assert "aws:source-ip-address" not in agg.datapoints("d2", None, 20)  # never connected: no address
    assert not any(key.startswith("aws:message-byte-size") for key in idle)  # no message, no message size
    assert agg.closed_windows(36) == []  # nothing closes twice


def test_disconnect_duration_and_catch_up_limit():
    agg = Aggregator(window_s=60, max_catch_up=3)
    agg.disconnect("d1", at=0)
    assert agg.datapoints("d1", None, end=300)["aws:disconnect-duration"] == {"count": 5}
    agg.connect_attempt("d1", None, True, at=301)
    assert agg.datapoints("d1", None, end=360)["aws:disconnect-duration"] == {"count": 0}
    assert agg.closed_windows(60 * 100) == [97, 98, 99]  # events long ago: at most 3 windows back
    assert agg.closed_windows(60 * 110) == [107, 108, 109]  # a long pause: only the last 3


def test_a_window_spent_wholly_away_says_so_and_no_other_does():
    """Only a window with no connection at any moment and no CONNECT carries ``AWAY_SERIES`` (ML
    Detect does not learn its 0s); every window keeps its 0s for evaluation."""
    agg = Aggregator(window_s=10)
    agg.connect_attempt("connected", None, True, at=1)
    agg.connect_attempt("leaves", None, True, at=1)
    agg.disconnect("leaves", at=15)  # in window 1: connected for part of it
    agg.connect_attempt("refused", None, False, at=2)  # a registered thing, refused in window 0
    agg.known = frozenset({"refused", "never"})
    agg.closed_windows(45)
    windows = [agg.take(w) for w in range(4)]

    def away(thing: str, window: int) -> bool:
        points = agg.datapoints(thing, windows[window].get(thing), (window + 1) * 10)
        assert points["aws:num-messages-sent"] == {"count": 0} or thing == "connected"
        return AWAY_SERIES in points

    assert [away("connected", w) for w in range(4)] == [False] * 4  # connected and idle: behaviour
    assert [away("leaves", w) for w in range(4)] == [False, False, True, True]
    assert [away("refused", w) for w in range(4)] == [False, True, True, True]  # it tried in window 0
    assert [away("never", w) for w in range(4)] == [True] * 4  # registered, never connected
    assert agg.datapoints("leaves", None, 40)[AWAY_SERIES] == {"count": 1}
    agg.connect_attempt("leaves", None, True, at=41)  # back: its window is not away, nor the next
    assert AWAY_SERIES not in agg.datapoints("leaves", agg.windows[4]["leaves"], 50)
    assert AWAY_SERIES not in agg.datapoints("leaves", None, 60)


def test_a_window_closed_after_a_change_of_connection_is_judged_as_it_ended():
    """A window closes a little after its end (the grace): a device that came back or left in
    between was still away, or still connected, at the end."""
    agg = Aggregator(window_s=60)
    agg.connect_attempt("returns", None, True, at=10)
    agg.disconnect("returns", at=20)
    agg.connect_attempt("leaves", None, True, at=10)
    agg.known = frozenset({"first"})
    agg.closed_windows(60.2)
    agg.take(0)
    agg.connect_attempt("returns", None, True, at=120.1)  # window 1 ended at 120, closes at 120.2
    agg.disconnect("returns", at=120.15)
    agg.connect_attempt("returns", None, True, at=120.18)  # a second return: the first one counts
    agg.disconnect("leaves", at=120.1)
    agg.connect_attempt("first", None, True, at=120.1)  # a registered thing's first connection
    assert agg.closed_windows(120.2) == [1]
    returned = agg.datapoints("returns", None, 120)
    assert returned[AWAY_SERIES] == {"count": 1}
    assert returned["aws:disconnect-duration"] == {"count": 1}  # away since 20
    left = agg.datapoints("leaves", None, 120)
    assert AWAY_SERIES not in left
    assert left["aws:disconnect-duration"] == {"count": 0}  # before: -1, its disconnection being after the end
    assert agg.datapoints("first", None, 120)[AWAY_SERIES] == {"count": 1}
    assert agg.closed_windows(180.2) == [2]  # the next window: back and connected throughout
    assert AWAY_SERIES not in agg.datapoints("returns", agg.take(2).get("returns"), 180)
    assert AWAY_SERIES not in agg.datapoints("first", None, 180)
    assert agg.datapoints("leaves", None, 180)["aws:disconnect-duration"] == {"count": 0}
    assert agg.returned == {"returns": (20, 120.1), "first": (None, 120.1)}  # kept until the next close
    agg.closed_windows(240.2)
    assert agg.returned == {}


def test_dimension_specs_from_profiles():
    profiles = [{"behaviors": [{"metric": "aws:num-messages-sent", "metricDimension": {"dimensionName": "t"}},
                               {"metric": "aws:listening-tcp-ports"}],
                 "additional_metrics_to_retain_v2": [{"metric": "aws:num-authorization-failures",
                                                      "metricDimension": {"dimensionName": "t", "operator": "NOT_IN"}}]}]
    assert dimension_specs(profiles, {"t": ["a/#"]}) == [
        DimensionSpec("aws:num-authorization-failures", "t", "NOT_IN", ("a/#",)),
        DimensionSpec("aws:num-messages-sent", "t", "IN", ("a/#",))]


def test_statistical_threshold_on_a_cloud_side_metric():
    """A fleet percentile of messages sent per window, as for device-side metrics."""
    from iotdefender.engine.alarm import counting_ids
    from iotdefender.engine.evaluator import Evaluator

    profile = {"name": "p", "behaviors": [{"name": "chatty", "metric": "aws:num-messages-sent", "criteria": {
        "comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p90"},
        "durationSeconds": 300}}]}
    agg, evaluator = Aggregator(window_s=300), Evaluator(counting_ids())
    for i in range(10):  # window 0: devices send 1..10 messages
        for _ in range(i + 1):
            agg.message_sent(f"d{i}", "telemetry", 10, at=100)
    for window in agg.closed_windows(301):
        data = agg.take(window)
        for i in range(10):
            evaluation = evaluator.evaluate(f"d{i}", [profile], agg.datapoints(f"d{i}", data.get(f"d{i}"), 300), 300)
            assert evaluation.events == []  # warm-up: no threshold yet
            evaluator.apply(evaluation.changes)
    for _ in range(40):  # window 1: d3 floods
        agg.message_sent("d3", "telemetry", 10, at=400)
    agg.message_sent("d4", "telemetry", 10, at=400)
    (window,) = agg.closed_windows(601)
    data = agg.take(window)
    raised = {}
    for thing in ("d3", "d4"):
        evaluation = evaluator.evaluate(thing, [profile], agg.datapoints(thing, data.get(thing), 600), 600)
        evaluator.apply(evaluation.changes)
        raised[thing] = [(e.event_type.value, e.evidence.get("threshold")) for e in evaluation.events]
    assert raised["d4"] == []
    # p90 of 1..10 is 9.1; at most 9.1 messages is at most 9, a count's threshold
    assert raised["d3"] == [("in-alarm", {"count": 9})]


def test_a_window_kept_at_a_stop_and_restored_adds_to_the_new_events():
    """The window open at a graceful stop, packed and restored into a fresh aggregator that has
    seen events of the same window meanwhile: one window with both."""
    before = Aggregator(300.0)
    for _ in range(4):
        before.message_sent("dev", "t/1", 10, 610.0)
    before.connect_attempt("dev", "10.0.0.1", True, 601.0)
    kept = {w: {c: pack(p) for c, p in clients.items()} for w, clients in before.open_windows().items()}
    after = Aggregator(300.0)
    after.message_sent("dev", "t/2", 99, 700.0)
    for window, clients in kept.items():
        for client, data in clients.items():
            after.restore(window, client, unpack(data))
    points = after.datapoints("dev", after.take(2)["dev"], 900.0)
    assert points["aws:num-messages-sent"] == {"count": 5}
    assert points["aws:message-byte-size"] == {"count": 99}
    assert points["aws:source-ip-address"] == {"cidrs": ["10.0.0.1"]}
    assert "dev" in after.seen


def test_a_refused_connect_makes_no_device_and_no_address_of_one():
    """A refused CONNECT counts for the device it claims (an attempt, an authorization failure) but
    makes no monitored device of an unknown name, alone or as a cluster part, and adds no address
    to a device's ``aws:source-ip-address``: it was not a connection. Anyone reaching the port made
    a device per refused CONNECT before (20,000 in 5 s in an outside-in test)."""
    agg = Aggregator(window_s=10, keeps_devices=True)
    agg.connect_attempt("known", "10.0.0.1", True, at=1)
    agg.connect_attempt("known", "203.0.113.9", False, at=2)
    agg.connect_attempt("phantom", "203.0.113.9", False, at=3)
    assert agg.seen == {"known"}
    window = agg.take(0)
    known = agg.datapoints("known", window["known"], 10)
    assert known["aws:num-connection-attempts"] == {"count": 2}
    assert known["aws:num-authorization-failures"] == {"count": 1}
    assert known["aws:source-ip-address"] == {"cidrs": ["10.0.0.1"]}
    # A registered thing never seen counts its refusals too: its window is read when it is monitored.
    assert agg.datapoints("phantom", window["phantom"], 10)["aws:num-authorization-failures"] == {"count": 1}
    # The same in cluster mode: a part of refused CONNECTs only makes no device; any other part does.
    detect = Aggregator(window_s=10, keeps_devices=True)
    detect.add_window(0, "phantom", unpack(pack(window["phantom"])))
    detect.add_window(0, "known", unpack(pack(window["known"])))
    assert detect.seen == {"known"}


def test_refused_connects_of_unknown_ids_are_kept_for_a_bounded_number_of_ids_a_window():
    """Anyone who reaches the port can send refused CONNECTs, each with a client id of its own, and
    each id held a window's entry until the close (~1.2 M a window at 4,000 a second). Past
    ``max_unknown_refused`` ids a window they are not kept; a device seen connected, a registered
    thing, and an id already kept in the window still count."""
    agg = Aggregator(window_s=10, max_unknown_refused=3)
    agg.connect_attempt("cam-1", "10.0.0.1", True, at=0.5)
    agg.known = {"registered-never-connected"}
    kept = [agg.connect_attempt(f"forged-{n}", "10.9.9.9", False, at=1) for n in range(5)]
    assert kept == [True, True, True, False, False]
    assert agg.connect_attempt("forged-0", "10.9.9.9", False, at=2)  # already kept: counts on
    assert agg.connect_attempt("cam-1", "10.9.9.9", False, at=3)  # a device seen connected
    assert agg.connect_attempt("registered-never-connected", "10.9.9.9", False, at=4)
    assert agg.connect_attempt("forged-9", "10.9.9.9", False, at=11)  # the next window has room again
    window = agg.windows[0]
    assert "forged-3" not in window and window["forged-0"].connection_attempts == 2
    assert window["registered-never-connected"].auth_failures == {None: 1}
    assert window["cam-1"].connection_attempts == 2
    assert agg.closed_windows(25) == [0, 1]
    assert agg.unknown_refused == {}  # forgotten with their windows


def test_the_address_of_a_connection_counts_in_every_window_it_is_open():
    """A device connected from a denied address stays connected from it: every window it is open
    says so (an empty list would satisfy any allowed set and clear the alarm), and a window spent
    away has no address datapoint at all."""
    agg = Aggregator(window_s=60)
    agg.connect_attempt("d", "203.0.113.9", True, at=10)
    agg.connect_attempt("e", "10.0.0.5", True, at=10)
    agg.message_sent("e", "cmd/x", 10, at=70)
    assert agg.closed_windows(180.2) == [0, 1, 2]
    for window in (0, 1, 2):
        taken = agg.take(window)
        assert agg.datapoints("d", taken.get("d"), (window + 1) * 60)["aws:source-ip-address"] == {"cidrs": ["203.0.113.9"]}
    agg.disconnect("d", at=240.1)  # after window 3's end, before its close: connected then
    agg.disconnect("e", at=250)
    assert agg.closed_windows(240.2) == [3]
    assert agg.datapoints("d", None, 240)["aws:source-ip-address"] == {"cidrs": ["203.0.113.9"]}
    assert agg.closed_windows(300.2) == [4]
    window = agg.take(4)
    assert agg.datapoints("d", window.get("d"), 300)["aws:source-ip-address"] == {"cidrs": ["203.0.113.9"]}
    assert agg.datapoints("e", window.get("e"), 300)["aws:source-ip-address"] == {"cidrs": ["10.0.0.5"]}
    assert agg.closed_windows(360.2) == [5]
    assert "aws:source-ip-address" not in agg.datapoints("d", agg.take(5).get("d"), 360)  # away
    assert agg.left == {}  # forgotten once their windows closed
    agg.connect_attempt("d", "10.0.0.7", True, at=400)
    agg.closed_windows(420.2)
    assert agg.datapoints("d", agg.take(6).get("d"), 420)["aws:source-ip-address"] == {"cidrs": ["10.0.0.7"]}


def test_a_connection_found_open_is_connected_from_its_address_and_counts_no_attempt():
    """A reader of a broker's counters that starts among open connections (NATS /connz after a
    restart): the devices are connected from then, with their address, and idle is behaviour; one
    away at the last window closed came back meanwhile. Before, both counted as away until their
    next event, without an address."""
    agg = Aggregator(window_s=10, last_closed=-1)
    agg.disconnected_at["was-away"] = -5.0  # as ``disconnections.load`` gives it back at a restart
    agg.seen.add("was-away")
    agg.connection_open("idle", "10.0.0.5", at=12)
    agg.connection_open("was-away", "10.0.0.6", at=12)
    agg.connection_open("idle", "10.0.0.9", at=13)  # read twice: the first stands
    assert agg.closed_windows(30.2) == [0, 1, 2]
    windows = [agg.take(w) for w in range(3)]
    for thing, address in (("idle", "10.0.0.5"), ("was-away", "10.0.0.6")):
        before, found, after = (agg.datapoints(thing, windows[w].get(thing), (w + 1) * 10) for w in range(3))
        assert AWAY_SERIES in before and "aws:source-ip-address" not in before  # not known then
        assert found["aws:source-ip-address"] == after["aws:source-ip-address"] == {"cidrs": [address]}
        assert AWAY_SERIES not in after and after["aws:num-connection-attempts"] == {"count": 0}
        assert after["aws:disconnect-duration"] == {"count": 0}


def test_a_topic_scoped_address_needs_a_message_on_the_topics_from_a_connection_of_any_age():
    agg = Aggregator(window_s=60)
    spec = DimensionSpec("aws:source-ip-address", "cmd", "IN", ("cmd/#",))
    agg.connect_attempt("d", "203.0.113.9", True, at=10)
    agg.message_sent("d", "cmd/open", 10, at=70)  # a window after the connection's
    agg.message_sent("d", "telemetry", 10, at=130)
    agg.closed_windows(180.2)
    agg.take(0)
    with_command = agg.datapoints("d", agg.take(1).get("d"), 120, [spec])
    assert with_command["aws:source-ip-address|cmd|IN"] == {"cidrs": ["203.0.113.9"]}  # before: []
    assert "aws:source-ip-address|cmd|IN" not in agg.datapoints("d", agg.take(2).get("d"), 180, [spec])


def test_a_detect_node_takes_the_address_from_the_parts():
    """Cluster mode: a broker node stamps its parts with the connection's address, and the detect
    node keeps it for the windows the device is idle in; the parts of a device that moved nodes
    give both addresses, the later connection's kept."""
    broker = Aggregator(window_s=60, keeps_devices=False)
    broker.connect_attempt("d", "10.0.0.1", True, at=10)
    broker.message_sent("d", "t", 5, at=70)
    parts = broker.open_windows()
    assert parts[1]["d"].address == "10.0.0.1" and not parts[1]["d"].source_ips  # connected a window before
    assert unpack(pack(parts[1]["d"])).address == "10.0.0.1"
    detect = Aggregator(window_s=60)
    detect.add_window(0, "d", parts[0]["d"])
    detect.add_window(1, "d", parts[1]["d"])
    assert detect.closed_windows(180.2) == [0, 1, 2]
    assert detect.datapoints("d", None, 180)["aws:source-ip-address"] == {"cidrs": ["10.0.0.1"]}  # idle, connected
    elsewhere = Aggregator(window_s=60, keeps_devices=False)
    elsewhere.connect_attempt("d", "10.0.0.2", True, at=200)
    broker.disconnect("d", at=190)
    moved = merge_windows([broker.open_windows()[3]["d"], elsewhere.open_windows()[3]["d"]])
    assert moved.address == "10.0.0.2" and sorted(moved.source_ips) == ["10.0.0.1", "10.0.0.2"]
    detect.add_window(3, "d", moved)
    assert detect.datapoints("d", moved, 240)["aws:source-ip-address"] == {"cidrs": ["10.0.0.1", "10.0.0.2"]}
    assert detect.connected_from["d"] == ("10.0.0.2", 200)
    gone = elsewhere.open_windows()[3]["d"]
    elsewhere.disconnect("d", at=250)
    detect.add_window(4, "d", elsewhere.open_windows()[4]["d"])
    assert "d" not in detect.connected_from and gone.address == "10.0.0.2"
