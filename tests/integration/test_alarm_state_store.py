"""Alarm states survive a restart as they were, the streak under way included (SQLite and the
JSON column: what a kill -9 in the middle of consecutive datapoints gives back)."""

from __future__ import annotations

from pathlib import Path

from iotdefender.cluster.partitions import partition_of
from iotdefender.engine.alarm import AlarmState, advance, counting_ids
from iotdefender.service import build_api
from iotdefender.settings import Settings
from iotdefender.store import violations
from iotdefender.store.database import writing
from iotdefender.store.partition_selection import PartitionSelection


def test_a_state_in_the_middle_of_a_streak_is_loaded_back_equal(tmp_path: Path) -> None:
    engine = build_api(Settings(data_dir=tmp_path)).context.engine
    ids = counting_ids()
    state = AlarmState()
    for at, ports in ((1000.0, [22]), (1300.0, [23])):
        state, transition = advance(state, True, {"ports": ports}, at, 3, 1, ids)
        assert transition is None
    key = ("t1", "p", "ports", "")
    with writing(engine) as conn:
        violations.save_alarm_states(conn, {key: state}, partition_of)
    with engine.connect() as conn:
        loaded = violations.load_alarm_states(conn)
    assert loaded == {key: state}
    _, transition = advance(loaded[key], True, {"ports": [24]}, 1600.0, 3, 1, ids)
    assert transition is not None and [at for at, _ in transition.datapoints] == [1000.0, 1300.0, 1600.0]


def test_a_state_saved_before_streaks_were_kept_loads_without_them(tmp_path: Path) -> None:
    engine = build_api(Settings(data_dir=tmp_path)).context.engine
    with writing(engine) as conn:
        conn.exec_driver_sql(
            "INSERT INTO alarm_states (thing_name, profile_name, behavior_name, dimension, state) VALUES "
            "('t1', 'p', 'ports', '', '{\"status\": \"normal\", \"violating_streak\": 1, \"compliant_streak\": 0, "
            "\"violation_id\": null, \"violation_start\": null, \"last_violation_value\": null, "
            "\"last_violation_time\": null, \"last_datapoint_at\": 1000.0}')")
    with engine.connect() as conn:
        (state,) = violations.load_alarm_states(conn).values()
    assert state.violating_streak == 1 and state.streak_points == ()


def test_a_takeover_loads_only_its_partitions_states_and_those_of_no_recorded_partition(tmp_path: Path) -> None:
    """States keep their thing's partition; a read of some partitions takes their rows, and rows
    without one (a node of the release before, during a rolling upgrade) picked by thing. The other
    partitions' rows are made unreadable: reading one of them would fail."""
    engine = build_api(Settings(data_dir=tmp_path)).context.engine
    partition = {"t0": 0, "t1": 1, "t2": 2, "old1": 1, "old2": 2}.__getitem__
    state, _ = advance(AlarmState(), True, {"ports": [22]}, 1000.0, 3, 1, counting_ids())
    with writing(engine) as conn:
        violations.save_alarm_states(conn, {(thing, "p", "ports", ""): state for thing in ("t0", "t1", "t2")}, partition)
        for old in ("old1", "old2"):  # as a node of the release before writes them
            conn.exec_driver_sql(
                "INSERT INTO alarm_states (thing_name, profile_name, behavior_name, dimension, state) "
                "SELECT ?, profile_name, behavior_name, dimension, state FROM alarm_states WHERE thing_name = 't1'",
                (old,))
        stored = dict(conn.exec_driver_sql("SELECT thing_name, partition FROM alarm_states").all())
        assert stored == {"t0": 0, "t1": 1, "t2": 2, "old1": None, "old2": None}
        conn.exec_driver_sql("UPDATE alarm_states SET state = '{}' WHERE partition = 0")
    with engine.connect() as conn:
        loaded = violations.load_alarm_states(conn, PartitionSelection(frozenset({1}), partition))
    assert loaded == {("t1", "p", "ports", ""): state, ("old1", "p", "ports", ""): state}
