"""The flags every cluster node must share, against a real nats-server: a node whose values differ
from a live node's is refused; one that left cleanly no longer counts."""

from __future__ import annotations

import asyncio

import nats
import pytest

from iotdefender.cluster.shared_settings import SettingsMismatch, SharedSettings, shared_values
from iotdefender.cluster.topology import Topology, ensure
from iotdefender.settings import Settings


def test_a_node_with_other_values_is_refused_until_the_other_node_has_left(jetstream):
    async def go() -> None:
        nc = await nats.connect(servers=jetstream.urls)
        js = nc.jetstream()
        topology = Topology(partitions=2, lease_ttl_s=30.0)  # entries outlive the test: only leaving removes them
        await ensure(js, topology)
        running = SharedSettings(js, topology, "node-a", shared_values(Settings(metrics_window=300.0)))
        await running.check()
        await SharedSettings(js, topology, "node-b", shared_values(Settings(metrics_window=300.0))).check()
        other = SharedSettings(js, topology, "node-c", shared_values(Settings(metrics_window=60.0)))
        with pytest.raises(SettingsMismatch, match=r"--metrics-window is 60.0 on this node but 300.0 on node node-a"):
            await other.check()
        await running.leave()
        with pytest.raises(SettingsMismatch, match="on node node-b"):  # node-b is still there
            await other.check()
        await SharedSettings(js, topology, "node-b", {}).leave()
        await other.check()  # every node with the old value left cleanly: the new value starts at once
        await nc.close()

    asyncio.run(asyncio.wait_for(go(), 60))
