"""Fleet-wide statistical thresholds across detect nodes: two nodes, each holding half the
devices and sharing their ended windows (``KvSharedWindows`` fed as its KV watcher feeds it),
compute the very threshold one box computes from all the devices."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from iotdefender.cluster.fleet_statistics import (COMPACT_VERSION, KvSharedWindows, WindowValues, _decoder,
                                                 compact_readable)
from iotdefender.engine.statistics import FleetStatistics, StatisticsChanges

KEY = ("fleet", "bytes")
STAT = "p90"
WINDOW_S = 300.0


def observe(stats: FleetStatistics, thing: str, value: float, now: float) -> None:
    changes: StatisticsChanges = {}
    stats.observe(KEY, STAT, WINDOW_S, thing, value, now, changes)
    stats.apply(changes)


def threshold(stats: FleetStatistics, now: float) -> tuple[float, int] | None:
    changes: StatisticsChanges = {}
    found = stats.threshold(KEY, STAT, WINDOW_S, now, changes)
    stats.apply(changes)
    return found


def share(now: float, nodes: dict[str, tuple[FleetStatistics, KvSharedWindows]]) -> None:
    """What each node's timer publishes and every node's watcher receives."""
    for name, (stats, _) in nodes.items():
        for key, window, values in stats.ended(now):
            for _, shared in nodes.values():
                shared.received(WindowValues(key[0], key[1], window, name, values))


def test_two_nodes_with_the_devices_split_compute_the_one_box_threshold():
    rng = random.Random(7)
    one_box = FleetStatistics()
    nodes = {}
    for name in ("a", "b"):
        shared = KvSharedWindows(name)
        nodes[name] = (FleetStatistics(shared=shared), shared)
    things = [f"dev-{i}" for i in range(40)]
    home = {thing: "a" if i % 3 else "b" for i, thing in enumerate(things)}  # 27 on a, 13 on b
    base = 10 * WINDOW_S
    for window in range(4):
        start = base + window * WINDOW_S
        for thing in things:
            value = rng.uniform(0, 100) + (50 if window == 2 else 0)
            observe(one_box, thing, value, start + rng.uniform(1, 200))
            observe(nodes[home[thing]][0], thing, value, start + rng.uniform(1, 200))
        share(start + WINDOW_S + 1, nodes)  # the window ended; each node's timer published it
        expected = threshold(one_box, start + WINDOW_S + 2)
        assert expected is not None and expected[1] == 40
        for name, (stats, _) in nodes.items():
            assert threshold(stats, start + WINDOW_S + 2) == expected, (window, name)


def test_a_threshold_is_recomputed_as_the_other_nodes_values_arrive():
    a, b = KvSharedWindows("a"), KvSharedWindows("b")
    stats_a, stats_b = FleetStatistics(shared=a), FleetStatistics(shared=b)
    base = 10 * WINDOW_S
    for i in range(3):
        observe(stats_a, f"a-{i}", float(i), base + 5)
    for i in range(3):
        observe(stats_b, f"b-{i}", 100.0 + i, base + 5)
    after = base + WINDOW_S + 1
    assert threshold(stats_a, after) is None  # 3 devices known to a: warm-up
    published = [WindowValues(key[0], key[1], window, name, values)
                 for stats, name in ((stats_a, "a"), (stats_b, "b")) for key, window, values in stats.ended(after)]
    assert len(published) == 2 and not stats_a.ended(after)  # each window handed out once
    for message in published:
        a.received(message)
    found = threshold(stats_a, after)
    assert found is not None and found[1] == 6
    # a node whose own devices sent nothing in the window still gets the fleet's threshold
    c = KvSharedWindows("c")
    stats_c = FleetStatistics(shared=c)
    for message in published:
        c.received(message)
    observe(stats_c, "c-0", 1.0, after)
    assert threshold(stats_c, after) == found


def test_a_nodes_values_count_once_its_publish_is_whole_and_the_latest_whole_one_wins():
    """A node's window in parts counts once all of its parts arrived, and moves the version once
    (the engine computes the percentile again at each move, over the whole fleet); a newer publish
    replaces the earlier one only once it is whole (never a mix of two publishes); a part of an
    older publish arriving late is ignored; an entry of the release before (no generation) replaces."""
    shared = KvSharedWindows("me")

    def part(generation: int, part: int, parts: int, values: dict[str, float]) -> WindowValues:
        return WindowValues(KEY[0], KEY[1], 7, "other", values, part, parts, generation)

    shared.received(part(100, 1, 3, {"b": 2.0}))
    shared.received(part(100, 0, 3, {"a": 1.0}))
    assert shared.others(KEY, 7) == (0, {})  # a part still missing: nothing counts yet
    shared.received(part(100, 2, 3, {"c": 4.0}))
    assert shared.others(KEY, 7) == (1, {"a": 1.0, "b": 2.0, "c": 4.0})
    shared.received(part(100, 2, 3, {"c": 4.0}))  # delivered again: no change
    shared.received(part(200, 0, 2, {"a": 5.0}))  # republished; its part 1 is not here yet
    assert shared.others(KEY, 7) == (1, {"a": 1.0, "b": 2.0, "c": 4.0})
    shared.received(part(100, 1, 3, {"b": 2.0}))  # the earlier publish's part, late
    shared.received(part(200, 1, 2, {"d": 6.0}))
    assert shared.others(KEY, 7) == (2, {"a": 5.0, "d": 6.0})
    shared.received(part(100, 0, 3, {"a": 1.0}))  # the earlier publish's part, later still
    assert shared.others(KEY, 7) == (2, {"a": 5.0, "d": 6.0})
    shared.received(WindowValues(KEY[0], KEY[1], 7, "other", {"c": 3.0}))  # the release before's entry
    assert shared.others(KEY, 7) == (3, {"c": 3.0})


def test_the_population_grown_publish_by_publish_is_the_merge_of_every_nodes_values():
    """``population`` adds each node's publish to what it merged before (at fleet size merging
    every node's values again at each arrival cost seconds under the detection lock). Against the
    plain rule, in random orders: the other nodes' values merged in the order they became whole,
    a later node's value of a device winning, this node's own values winning over all; a node
    that publishes again replaces its values; the same own values asked again as more arrive."""
    rng = random.Random(11)
    for trial in range(300):
        shared = KvSharedWindows("me")
        devices = [f"d{i}" for i in range(rng.randint(1, 30))]
        whole: dict[str, dict[str, float]] = {}  # node -> its latest whole publish, in order of becoming whole
        generation = 0
        own: dict[str, float] | None = None
        for _ in range(rng.randint(1, 12)):
            node = rng.choice(["a", "b", "c", "me"])
            values = {device: rng.choice([1.0, 2.0, 3.0, 4.0, 5.0]) for device in rng.sample(devices, rng.randint(0, len(devices)))}
            items = list(values.items())
            cuts = sorted(rng.sample(range(1, len(items)), min(rng.randint(0, 3), max(0, len(items) - 1)))) if items else []
            chunks = [dict(items[a:b]) for a, b in zip([0, *cuts], [*cuts, len(items)])] or [{}]
            generation += 1
            for index in rng.sample(range(len(chunks)), len(chunks)):
                shared.received(WindowValues(KEY[0], KEY[1], 7, node, chunks[index], index, len(chunks), generation))
            whole.pop(node, None)
            whole[node] = values
            if rng.random() < 0.7:
                if own is None or rng.random() < 0.5:  # else the same closed window, asked again
                    own = {device: rng.choice([10.0, 20.0]) for device in rng.sample(devices, rng.randint(0, len(devices)))}
                expected: dict[str, float] = {}
                for other, published in whole.items():
                    if other != "me":
                        expected.update(published)
                expected.update(own)
                version, population = shared.population(KEY, 7, own)
                assert version == shared.version(KEY, 7)
                assert sorted(population.values().tolist()) == sorted(expected.values()), trial


def device_partition(device: str) -> int:
    return int(device[1:]) % 4


def window_values(node: str, items: list[tuple[str, float]], part: int, parts: int, generation: int,
                  partitions: list[int], compact: bool) -> WindowValues:
    if not compact:
        return WindowValues(KEY[0], KEY[1], 7, node, dict(items), part, parts, generation, partitions)
    return WindowValues(KEY[0], KEY[1], 7, node, part=part, parts=parts, generation=generation, partitions=partitions,
                        names="\n".join(name for name, _ in items),
                        packed=np.array([value for _, value in items], dtype="<f8").tobytes())


@pytest.mark.parametrize("form", ["map", "compact", "either"])
@pytest.mark.parametrize("partitioned", [False, True], ids=["partitions-unnamed", "partitions-named"])
def test_the_population_is_the_plain_merge_whatever_arrives_in_whatever_order(partitioned, form):
    """Parts of several publishes interleaved, delivered twice, late, entries of the release before
    (generation 0, one part) and this node's own values asked again or anew: ``population`` is
    always what ``others`` merges plainly, overridden by the node's own values, at the same version.
    ``partitioned``: publishes name their devices' partitions (but the release before's), and
    moved devices are looked for only between publishes, and among this node's own, that share one.
    ``form``: publishes carry a map of values, the compact form (names and packed values), or
    either (the release before's always a map)."""
    for trial in range(1500):
        rng = random.Random(trial)
        shared = KvSharedWindows("me", partition_of=device_partition if partitioned else None)
        devices = [f"d{i}" for i in range(rng.randint(1, 15))]
        undelivered: list[WindowValues] = []
        generation = 0
        own: dict[str, float] = {}
        for _ in range(rng.randint(1, 40)):
            draw = rng.random()
            if draw < 0.3:
                node = rng.choice(["a", "b", "c", "me"])
                items = [(device, float(rng.randint(1, 9)))
                         for device in rng.sample(devices, rng.randint(0, len(devices)))]
                if rng.random() < 0.1:
                    release_before, parts = True, 1
                else:
                    generation += 1
                    release_before, parts = False, rng.randint(1, 3)
                named = sorted({device_partition(device) for device, _ in items}) if partitioned else []
                compact = not release_before and (form == "compact" or (form == "either" and rng.random() < 0.5))
                undelivered += [window_values(node, items[part::parts], part, parts,
                                              0 if release_before else generation,
                                              [] if release_before else named, compact) for part in range(parts)]
            elif draw < 0.8 and undelivered:
                message = undelivered.pop(rng.randrange(len(undelivered)))
                shared.received(message)
                if rng.random() < 0.2:
                    undelivered.append(message)  # delivered again later
            else:
                if rng.random() < 0.3:
                    own = {device: rng.choice([10.0, 20.0]) for device in rng.sample(devices, rng.randint(0, len(devices)))}
                version, population = shared.population(KEY, 7, own)
                plain_version, others = shared.others(KEY, 7)
                assert version == plain_version == shared.version(KEY, 7), trial
                assert sorted(population.values().tolist()) == sorted({**others, **own}.values()), trial


def test_a_compact_publish_is_cut_to_fit_and_read_whole():
    """The compact form, cut in one pass by the bytes each device costs: every part fits the
    message limit, and a receiver reads the same values back (names with separators and long ones,
    values of every kind)."""
    rng = random.Random(5)
    for limit in (300, 1000, 2000):
        values = {f"d{n}-{'x' * rng.randint(0, 60)}": rng.choice([0.0, -1.5, 1e300, float(n), 2.5e-300])
                  for n in range(rng.randint(200, 400))}
        sent: list[bytes] = []

        class Bucket:
            async def put(self, key: str, value: bytes) -> None:
                sent.append(value)

        publisher = KvSharedWindows("a", limit, partition_of=device_partition_any, compact=lambda: True)
        publisher._kv = Bucket()
        asyncio.run(publisher.publish(KEY, 7, values))
        assert len(sent) > 1 and all(len(part) <= limit for part in sent), (limit, [len(part) for part in sent])
        receiver = KvSharedWindows("b")
        for part in sent:
            message = _decoder.decode(part)
            assert message.names and not message.values
            receiver.received(message)
        assert receiver.others(KEY, 7)[1] == values


def device_partition_any(device: str) -> int:
    return int(device[1:].split("-")[0]) % 4


def test_a_compact_part_whose_values_do_not_match_its_names_is_dropped():
    receiver = KvSharedWindows("b")
    receiver.received(WindowValues(KEY[0], KEY[1], 7, "a", names="d1\nd2", packed=np.array([1.0]).tobytes()))
    receiver.received(WindowValues(KEY[0], KEY[1], 7, "a", {"d3": 1.0}, names="d1", packed=np.array([1.0]).tobytes()))
    assert receiver.others(KEY, 7) == (0, {})
    receiver.received(WindowValues(KEY[0], KEY[1], 7, "a", names="d1\nd2", packed=np.array([1.0, 2.0]).tobytes()))
    assert receiver.others(KEY, 7)[1] == {"d1": 1.0, "d2": 2.0}


def test_the_compact_form_is_used_only_once_every_other_live_node_announces_it():
    assert compact_readable([COMPACT_VERSION, COMPACT_VERSION])
    assert compact_readable([])
    assert not compact_readable([COMPACT_VERSION, None])  # a node of the release before
