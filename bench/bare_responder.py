"""The ratio's denominator: a bare responder that answers each report, without detection or storage.

It joins a broker like the service does with ``--mqtt-url`` (one gmqtt connection, subscribed at
QoS 1 to every thing's JSON report topic) and answers each report on ``.../json/accepted`` with
the same document shape the service sends. What it costs is the floor any responder pays: the
broker's routing of reports and replies over the fleet's connections, and one JSON decode.

    python -m bench.bare_responder --port 1883 [--username iotdefender]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
import uvloop
from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311

REPORTS = "$aws/things/+/defender/metrics/json"


async def serve(port: int, username: str | None) -> None:
    client = Client(f"bench-responder-{time.monotonic_ns()}", clean_session=True)
    if username:
        client.set_auth_credentials(username, None)
    subscribed = asyncio.Event()

    def on_message(c: Client, topic: str, payload: bytes, qos: int, properties: object) -> int:
        thing = topic.split("/")[2]
        report_id = orjson.loads(payload)["header"]["report_id"]
        reply = orjson.dumps({"thingName": thing, "reportId": report_id, "status": "ACCEPTED",
                              "timestamp": int(time.time() * 1000)})
        c.publish(f"{topic}/accepted", reply, qos=1)
        return 0

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    await client.connect("127.0.0.1", port, version=MQTTv311, keepalive=60)
    client.subscribe(REPORTS, qos=1)
    await subscribed.wait()
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--username", default=None)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.username))


if __name__ == "__main__":
    main()
