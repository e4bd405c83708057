"""A fleet at once on the default broker: thousands of devices, one connection each, each subscribed
at QoS 1 to its own replies under the ``own`` ACL, all connected together; every one reports and
every one gets its ``accepted`` reply (the amqtt broker this replaced fell behind from ~1,000 devices).

IOTDEFENDER_FLEET_DEVICES overrides the size (2,000 by default, to stay quick on two cores).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311

from tests.support.mqtt import report
from tests.support.processes import ServiceProcess

DEVICES = int(os.environ.get("IOTDEFENDER_FLEET_DEVICES", "2000"))


async def fleet(port: int, count: int) -> tuple[int, float, float]:
    """Connect every device, then have each report once; (replies, connect seconds, report seconds)."""
    accepted: dict[str, asyncio.Event] = {}
    clients: list[Client] = []

    def on_message(client: Client, topic: str, payload: bytes, qos: int, properties: object) -> int:
        if topic.endswith("/json/accepted"):
            accepted[client._client_id].set()
        return 0

    async def connect(name: str) -> None:
        client = Client(name, clean_session=True)
        client.on_message = on_message
        subscribed = asyncio.Event()
        client.on_subscribe = lambda *a: subscribed.set()
        accepted[name] = asyncio.Event()
        await client.connect("127.0.0.1", port, version=MQTTv311, keepalive=120)
        client.subscribe(f"$aws/things/{name}/defender/metrics/json/+", qos=1)
        await asyncio.wait_for(subscribed.wait(), 60)
        clients.append(client)

    started = time.monotonic()
    names = [f"fleet-{i:05d}" for i in range(count)]
    for start in range(0, count, 200):  # 200 CONNECTs in flight at a time, like a reconnect storm
        await asyncio.gather(*(connect(n) for n in names[start:start + 200]))
    connected = time.monotonic() - started

    started = time.monotonic()
    for index, client in enumerate(clients):
        name = client._client_id
        client.publish(f"$aws/things/{name}/defender/metrics/json", json.dumps(report(1, [22])).encode(), qos=1)
        if index % 500 == 499:
            await asyncio.sleep(0)
    done = 0
    deadline = time.monotonic() + 120
    for event in accepted.values():
        try:
            await asyncio.wait_for(event.wait(), max(0.1, deadline - time.monotonic()))
            done += 1
        except TimeoutError:
            pass
    reported = time.monotonic() - started
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)
    return done, connected, reported


def test_thousands_of_devices_connected_together_all_get_their_replies(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    svc = ServiceProcess(data_dir=tmp_path, extra_args=["--report-min-interval", "0", "--mqtt-acl", "own"])
    svc.start()
    try:
        done, connected, reported = asyncio.run(fleet(svc.mqtt_port, DEVICES))
        print(f"{DEVICES} devices: connected in {connected:.1f} s, {done} replies in {reported:.1f} s")
        assert done == DEVICES
    finally:
        svc.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
