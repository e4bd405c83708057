"""Listing the detect nodes every tick must not leave JetStream consumers behind (real nats-server)."""

from __future__ import annotations

import asyncio
import time

import nats.js.errors

from iotdefender.cluster.ownership import bucket_keys
from iotdefender.cluster.topology import Topology
from tests.support.jetstream import connected


def test_listing_the_members_every_tick_leaves_no_consumer_behind(jetstream):
    """nats-py's KeyValue.keys() left each listing's consumer on the server for 5 minutes: ~300 per
    detect node, and at four nodes the server's limit of 1,000 consumers on the members' stream
    made every rebalance fail. A listing's consumer is now gone about a second after it."""
    async def go() -> None:
        topology = Topology(replicas=1, partitions=8)
        nc, js = await connected(jetstream.urls, topology)
        members = await js.key_value(topology.members_bucket)
        await members.put("node-a", b"")
        await members.put("node-b", b"")
        for _ in range(30):  # thirty ticks' worth
            assert sorted(await bucket_keys(members)) == ["node-a", "node-b"]
        await members.delete("node-b")  # a clean leave
        assert await bucket_keys(members) == ["node-a"]
        stream = f"KV_{topology.members_bucket}"
        deadline = time.monotonic() + 15
        while (count := (await js.stream_info(stream)).state.consumer_count) > 0:
            assert time.monotonic() < deadline, f"{count} listing consumers still on the server"
            await asyncio.sleep(0.25)
        await nc.close()

    asyncio.run(asyncio.wait_for(go(), 60))


def test_a_listing_whose_consumer_the_server_removed_is_read_again():
    """The server removes a listing's consumer after a second without its reader (a node starved of
    CPU): the listing raised NotFoundError and the ownership round failed; now it lists again."""
    class Gone(nats.js.errors.NotFoundError):
        pass

    class Watcher:
        def __init__(self, keys: list[str], fail: bool) -> None:
            self._keys, self._fail = keys, fail

        def __aiter__(self):  # type: ignore[no-untyped-def]
            return self._entries()

        async def _entries(self):  # type: ignore[no-untyped-def]
            if self._fail:
                raise Gone()
            for key in self._keys:
                yield type("Entry", (), {"key": key, "value": b"", "delta": 0})()
            yield None

        async def stop(self) -> None:
            if self._fail:
                raise Gone()  # unsubscribing deletes a consumer that is gone too

    class Bucket:
        def __init__(self) -> None:
            self.listings = 0

        async def watchall(self, **_: object) -> Watcher:
            self.listings += 1
            return Watcher(["node-a", "node-b"], fail=self.listings == 1)

    bucket = Bucket()
    assert sorted(asyncio.run(bucket_keys(bucket))) == ["node-a", "node-b"]  # type: ignore[arg-type]
    assert bucket.listings == 2
