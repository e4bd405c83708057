"""A cluster node notices a NATS server that stops answering without closing the connection.

A frozen nats-server (SIGSTOP here; a path cut without a reset looks the same) keeps the TCP
connection open, so only the client's pings can tell. With nats-py's defaults (a ping every 120 s)
a node stayed on it for minutes, answering every report through it ServiceUnavailable."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from iotdefender.cluster_serve import connect
from tests.support.jetstream import SingleJetStream

NOTICED_WITHIN_S = 20.0  # the settings give about 8 s; the rest is margin for a loaded machine


def test_a_node_leaves_a_server_that_stopped_answering():
    server = SingleJetStream()
    server.start()
    pid = server.server.process.pid
    try:
        async def go() -> float:
            nc = await connect(server.urls, "liveness-probe", lambda: None)
            try:
                assert nc.is_connected
                os.kill(pid, signal.SIGSTOP)
                frozen = time.monotonic()
                while nc.is_connected and time.monotonic() - frozen < NOTICED_WITHIN_S + 5:
                    await asyncio.sleep(0.1)
                return time.monotonic() - frozen if not nc.is_connected else float("inf")
            finally:
                os.kill(pid, signal.SIGCONT)
                await nc.close()

        noticed = asyncio.run(go())
        assert noticed <= NOTICED_WITHIN_S, f"still connected to the frozen server {noticed:.1f} s later"
    finally:
        os.kill(pid, signal.SIGCONT)
        server.stop()
