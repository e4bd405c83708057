"""The embedded broker's adapter run against a real Mosquitto in a test: a recorder standing in for
the cloud-side metrics, paho devices, and the counters the broker's answers move."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Awaitable, Callable
from typing import Any

import paho.mqtt.client as mqtt
from prometheus_client import REGISTRY

from iotdefender.brokers.gatekeeper import Gatekeeper
from iotdefender.brokers.listeners import ListenerSettings
from iotdefender.brokers.mosquitto.broker import MosquittoBroker
from tests.support.processes import free_port


class Recorder:
    """Stands in for the cloud-side metrics service: keeps what the broker tells it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.stamps: list[tuple[float | None, float]] = []  # each event's time from the broker, and when told

    def _stamped(self, at: float | None) -> None:
        self.stamps.append((at, time.time()))

    def connect_attempt(self, client_id: str, address: str | None, ok: bool, at: float | None = None) -> None:
        self.events.append(("connect", client_id, str(address), str(ok)))
        self._stamped(at)

    def disconnect(self, client_id: str, at: float | None = None) -> None:
        self.events.append(("disconnect", client_id))
        self._stamped(at)

    def authorization_failure(self, client_id: str, topic: str | None, at: float | None = None) -> None:
        self.events.append(("authorization_failure", client_id, str(topic)))
        self._stamped(at)

    def message_sent(self, client_id: str, topic: str, size: int, at: float | None = None) -> None:
        self.events.append(("sent", client_id, topic, str(size)))
        self._stamped(at)

    def message_received(self, client_id: str, topic: str, at: float | None = None) -> None:
        self.events.append(("received", client_id, topic))
        self._stamped(at)

    def connections_lost(self, at: float | None = None) -> None:
        self.events.append(("connections_lost",))
        self._stamped(at)


def connect(port: int, client_id: str) -> tuple[mqtt.Client, queue.Queue[int], queue.Queue[bool]]:
    codes: queue.Queue[int] = queue.Queue()
    gone: queue.Queue[bool] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, reconnect_on_failure=False)
    client.on_connect = lambda c, u, f, reason, p: codes.put(reason.value)
    client.on_disconnect = lambda *a: gone.put(True)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, codes, gone


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def run_with_broker(body: Callable[[MosquittoBroker, int, Recorder, list], Awaitable[None]],
                    tmp_path: Any, answer: bool = False) -> None:
    """``answer``: every report is answered ``accepted`` as the service answers (the broker hands a
    thing's reports over only while fewer than config.REPORTS_AWAITING_ANSWER wait for theirs)."""
    async def main() -> None:
        port = free_port()
        recorder = Recorder()
        reports: list = []
        built: list[MosquittoBroker] = []

        def sink(thing: str, encoding: str, payload: bytes, received: float | None = None) -> None:
            reports.append((thing, encoding, payload))
            if answer:
                built[0].publish_now(f"$aws/things/{thing}/defender/metrics/{encoding}/accepted", b"{}")

        gatekeeper = Gatekeeper(observer=recorder)
        broker = MosquittoBroker(ListenerSettings("127.0.0.1", port), gatekeeper, sink, cache_dir=tmp_path / "cache")
        built.append(broker)
        await broker.start()
        try:
            await body(broker, port, recorder, reports)
        finally:
            await broker.stop()

    asyncio.run(main())


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


ANSWERED_UNAVAILABLE = ("iotdefender_mqtt_reports_rejected_by_broker_total", {"code": "ServiceUnavailable"})
ANSWERED_THROTTLED = ("iotdefender_mqtt_reports_rejected_by_broker_total", {"code": "Throttled"})
