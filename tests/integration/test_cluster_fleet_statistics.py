"""Fleet statistics shared through a real nats-server's KV bucket: what one node publishes,
the other receives (and a node that starts later gets what was published before it)."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from iotdefender.cluster.fleet_statistics import BUCKET, KvSharedWindows
from iotdefender.cluster.ownership import bucket_keys
from iotdefender.cluster.partitions import partition_of
from iotdefender.message_size import payload_limit

KEY = ("fleet profile", "bytes:out")  # names the KV key cannot carry as they are


async def _until(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("not received")
        await asyncio.sleep(0.02)


def test_window_values_published_by_one_node_reach_the_others(jetstream):
    async def go() -> None:
        nc_a, nc_b = await nats.connect(servers=jetstream.urls), await nats.connect(servers=jetstream.urls)
        a, b = KvSharedWindows("host.a-1-x"), KvSharedWindows("host.b-2-y")
        await a.start(nc_a.jetstream(), 1)
        await b.start(nc_b.jetstream(), 1)
        await a.publish(KEY, 41, {"dev-1": 1.5, "dev-2": 3.0})
        await b.publish(KEY, 41, {"dev-3": 7.0})
        await _until(lambda: b.others(KEY, 41)[1] == {"dev-1": 1.5, "dev-2": 3.0}, 5)
        await _until(lambda: a.others(KEY, 41)[1] == {"dev-3": 7.0}, 5)
        version = b.others(KEY, 41)[0]
        await a.publish(KEY, 41, {"dev-1": 2.5, "dev-2": 3.0})  # republished: replaces, version moves
        await _until(lambda: b.others(KEY, 41)[1]["dev-1"] == 2.5, 5)
        assert b.others(KEY, 41)[0] > version
        late = KvSharedWindows("c")  # a node that starts now reads the bucket's current values
        nc_c = await nats.connect(servers=jetstream.urls)
        await late.start(nc_c.jetstream(), 1)
        await _until(lambda: late.others(KEY, 41)[1] == {"dev-1": 2.5, "dev-2": 3.0, "dev-3": 7.0}, 5)
        for shared in (a, b, late):
            await shared.stop()
        for nc in (nc_a, nc_b, nc_c):
            await nc.close()

    asyncio.run(asyncio.wait_for(go(), 30))




@pytest.mark.parametrize("compact", [False, True], ids=["map", "compact"])
def test_a_nodes_values_beyond_one_nats_message_reach_the_others_in_parts(jetstream, compact):
    """300,000 devices' values of one window (a detect node's share of a 10M fleet): ~6 MB, more
    than NATS carries in one message (1 MB), go in parts and arrive whole; republished in fewer
    parts, the parts left over from before are not counted. In either form (``compact``: once
    every other live node reads it)."""
    async def go() -> None:
        nc_a, nc_b = await nats.connect(servers=jetstream.urls), await nats.connect(servers=jetstream.urls)
        a = KvSharedWindows("a", payload_limit(nc_a.max_payload), partition_of=partition_of, compact=lambda: compact)
        b = KvSharedWindows("b", payload_limit(nc_b.max_payload))
        await a.start(nc_a.jetstream(), 1)
        await b.start(nc_b.jetstream(), 1)
        many = {f"device-{n:07d}": float(n) for n in range(300_000)}
        await a.publish(KEY, 7, many)
        await _until(lambda: len(b.others(KEY, 7)[1]) == len(many), 20)
        assert b.others(KEY, 7)[1] == many
        # Every part names the publish's partitions, which the receiver keeps with its values.
        assert b._windows[(KEY, 7)].complete["a"].partitions == frozenset(map(partition_of, many))
        fewer = {f"device-{n:07d}": -1.0 for n in range(30_000)}
        await a.publish(KEY, 7, fewer)
        await _until(lambda: b.others(KEY, 7)[1] == fewer, 20)
        late = KvSharedWindows("c")  # a node that starts now reads the bucket: the republish wins
        nc_c = await nats.connect(servers=jetstream.urls)
        await late.start(nc_c.jetstream(), 1)
        await _until(lambda: late.others(KEY, 7)[1] == fewer, 20)
        for shared in (a, b, late):
            await shared.stop()
        for nc in (nc_a, nc_b, nc_c):
            await nc.close()

    asyncio.run(asyncio.wait_for(go(), 60))


def test_a_node_leaves_in_the_bucket_only_the_windows_still_read(jetstream):
    """A threshold is the previous window's percentile, so of a node's windows only the newest two
    are read. Older windows, and the parts left over when a window is published again in fewer,
    are deleted: kept for the bucket's 2 h, a 5-minute series held 24 windows of every node's
    values (GBs at a 10M fleet), which every node that starts reads through its watch."""
    async def go() -> None:
        nc = await nats.connect(servers=jetstream.urls)
        a = KvSharedWindows("a", 600)  # small messages: each window below goes in several parts
        await a.start(nc.jetstream(), 1)
        values = {f"device-{n:03d}": float(n) for n in range(60)}
        for window in range(1, 6):
            await a.publish(KEY, window, values)
        kv = await nc.jetstream().key_value(BUCKET)
        # bucket_keys, not nats-py's kv.keys(): that one can end before its first entry and raise
        # NoKeysError on a bucket just written (ownership.bucket_entries; seen here in CI).
        parts = len([key for key in await bucket_keys(kv) if key.split(".")[2] == "5"])
        assert parts > 2
        assert {key.split(".")[2] for key in await bucket_keys(kv)} == {"4", "5"}
        await a.publish(KEY, 5, {"device-000": 9.0})  # again, in one part
        assert sorted(key.split(".")[2] for key in await bucket_keys(kv)) == ["4"] * parts + ["5"]
        late = KvSharedWindows("c")
        nc_late = await nats.connect(servers=jetstream.urls)
        await late.start(nc_late.jetstream(), 1)
        await _until(lambda: late.others(KEY, 5)[1] == {"device-000": 9.0} and late.others(KEY, 4)[1] == values, 5)
        assert late.others(KEY, 3) == (0, {})
        for shared in (a, late):
            await shared.stop()
        for client in (nc, nc_late):
            await client.close()

    asyncio.run(asyncio.wait_for(go(), 30))


def test_a_window_whose_publish_failed_is_published_at_the_next_try(jetstream):
    """A node's values count for the others only once its whole publish arrived, so a publish that
    failed (here: the bucket is gone for a moment) is tried again each period until it goes through."""
    async def go() -> None:
        nc = await nats.connect(servers=jetstream.urls)
        js = nc.jetstream()
        a = KvSharedWindows("a")
        await a.start(js, 1)
        config = (await js.stream_info(f"KV_{BUCKET}")).config
        await js.delete_key_value(BUCKET)
        values = {f"device-{n}": float(n) for n in range(10)}
        handed = [[(KEY, 5, values)]]  # the engine hands each ended window out once

        def ended(now: float) -> list:
            return handed.pop() if handed else []

        runner = asyncio.create_task(a.run(ended, period_s=0.1))
        await asyncio.sleep(0.6)  # a few tries fail
        assert not handed and not runner.done()
        await js.add_stream(config)  # the bucket is back
        late = KvSharedWindows("c")
        nc_late = await nats.connect(servers=jetstream.urls)
        await late.start(nc_late.jetstream(), 1)
        await _until(lambda: late.others(KEY, 5)[1] == values, 5)
        runner.cancel()
        for shared in (a, late):
            await shared.stop()
        for client in (nc, nc_late):
            await client.close()

    asyncio.run(asyncio.wait_for(go(), 30))
