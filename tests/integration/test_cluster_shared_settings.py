"""The flags every cluster node must share, against a real nats-server: a node whose values differ
from a live node's is refused; one that left cleanly no longer counts."""

from __future__ import annotations

import asyncio

import nats
import pytest

from iotdefender.cluster.shared_settings import SettingsMismatch, SharedSettings, shared_values
from iotdefender.cluster.topology import Topology, ensure
from iotdefender.pipeline.report_message import READS_ANNOUNCEMENT, announcement, version_to_write
from iotdefender.settings import Settings
from tests.support.jetstream import connected


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


def test_a_broker_node_writes_the_report_version_every_live_node_announces_it_reads(jetstream):
    """Rolling upgrades: each node announces the report message versions it reads in its entry. A
    node of a next release that reads and writes versions 1 and 2 writes 1 while a node of this
    release (reads 1) or of a release before the announcement (an entry of flags only) lives, and
    2 once they have left. The announcement is not compared as a flag."""
    async def go() -> None:
        topology = Topology(partitions=2, lease_ttl_s=30.0)
        nc, js = await connected(jetstream.urls, topology)
        values = shared_values(Settings())
        older = SharedSettings(js, topology, "node-older", values)  # 209be04: flags only
        this = SharedSettings(js, topology, "node-this", values, announcement())
        nxt = SharedSettings(js, topology, "node-next", values, {READS_ANNOUNCEMENT: [1, 2]})
        for node in (older, this, nxt):
            await node.check()  # different announcements are no reason to refuse a node
        assert version_to_write(nxt.announced(READS_ANNOUNCEMENT), writes={1, 2}) == 1
        await this.leave()
        await nxt.others()
        assert version_to_write(nxt.announced(READS_ANNOUNCEMENT), writes={1, 2}) == 1  # the older node reads only 1
        await older.leave()
        await nxt.others()
        assert version_to_write(nxt.announced(READS_ANNOUNCEMENT), writes={1, 2}) == 2
        assert version_to_write(this.announced(READS_ANNOUNCEMENT)) == 1  # this release writes version 1 whatever the others read
        await nxt.leave()
        await nc.close()

    asyncio.run(asyncio.wait_for(go(), 60))
