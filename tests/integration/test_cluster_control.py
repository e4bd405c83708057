"""Control-plane notices on a real nats-server: a change announced by one node (from an API worker
thread, as ``on_change`` is called) drops every node's caches, its own included; a node whose NATS
connection comes back drops them too, for whatever notice it missed meanwhile. Losing NATS is
logged; closing the connection on purpose (a refused start, a clean stop) is not."""

from __future__ import annotations

import asyncio
import threading
import time

from structlog.testing import capture_logs

from iotdefender.cluster.control import ControlNotices
from iotdefender.cluster_serve import connect
from tests.support.processes import wait_for


def test_a_change_reaches_every_node_and_a_reconnection_drops_the_caches(jetstream):
    async def go() -> None:
        dropped = {"n1": 0, "n2": 0}
        notices: dict[str, ControlNotices] = {}

        def dropper(node: str):  # type: ignore[no-untyped-def]
            return lambda: dropped.__setitem__(node, dropped[node] + 1)

        nc1 = await connect(jetstream.urls, "n1", lambda: notices["n1"].apply())
        nc2 = await connect(jetstream.urls, "n2", lambda: notices["n2"].apply())
        for node, nc in (("n1", nc1), ("n2", nc2)):
            notices[node] = ControlNotices(nc, node, [dropper(node)])
            await notices[node].start()
        await nc1.flush()
        await nc2.flush()

        sent = time.monotonic()
        threading.Thread(target=notices["n1"].changed).start()  # the API calls it from a worker thread
        while dropped != {"n1": 1, "n2": 1}:
            assert time.monotonic() - sent < 1.0, f"notice not applied within 1 s: {dropped}"
            await asyncio.sleep(0.005)
        print(f"notice applied on both nodes {1000 * (time.monotonic() - sent):.1f} ms after the change")

        jetstream.server.stop()  # NATS goes away and comes back: each node's caches are dropped
        await asyncio.to_thread(jetstream.server.start)
        await asyncio.to_thread(wait_for, jetstream.server.healthy, 20, "nats-server again")
        deadline = time.monotonic() + 15
        while not (dropped["n1"] >= 2 and dropped["n2"] >= 2):
            assert time.monotonic() < deadline, f"caches not dropped on reconnection: {dropped}"
            await asyncio.sleep(0.05)
        lost = disconnections()
        assert sorted(lost) == ["n1", "n2"], lost  # the outage, once per node
        await nc1.close()
        await nc2.close()
        assert disconnections() == lost, "a deliberate close was logged as losing NATS"

    def disconnections() -> list[str]:
        return [e["node"] for e in logs if e["event"] == "cluster.nats_disconnected"]

    with capture_logs() as logs:
        asyncio.run(asyncio.wait_for(go(), 60))
