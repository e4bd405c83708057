"""A detect node's reader -> writer cycle alone: 64 partitions' readers, one writer, real PostgreSQL.

bench/cluster.py measures the whole cluster, whose figures on a shared 2-core machine move several
times over between runs of the same code (other processes take the cores). This one keeps only the
detect node's part that decides how many transactions a report waits for: ``PartitionBatchStore``
(the writer: one transaction at a time over every partition batch waiting) fed the way
``PartitionReader`` feeds it (each partition hands over everything that arrived while its previous
batch was being committed, and waits for that batch's commit; what arrives while its batch waits
for the writer joins it when the writer takes it). Reports arrive evenly spaced at
``--rate`` over ``--devices`` things (bench/fleet_workload.py's 1.8 KB report, its 3 profiles x 10
behaviors), in one process: no NATS, no broker node.

Measured: arrival -> committed (the handler returned: the outcome is sent at that moment) p50/p99,
transactions, reports per transaction, this process's CPU-seconds per 1,000 reports, and per
report the commits from its arrival to its own, that one included (``commits_waited``: 2 is the
transaction in progress when it arrived, then its own; 3 or more, a batch that waited while the
report could not join it). Run with an older tree's ``src`` (a store whose ``handle`` takes no
``more``), it feeds batches as the reader did then: for A/B runs.

    PYTHONPATH=src .venv/bin/python bench/cluster_writer.py [--rate 1000] [--seconds 10] [--devices 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import inspect
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import fleet_workload  # noqa: E402
from bench.common import bounded, environment, report  # noqa: E402
from iotdefender.alerts.routes import AlertRoutes  # noqa: E402
from iotdefender.cluster.partitions import PARTITION_COUNT, partition_of  # noqa: E402
from iotdefender.cluster.report_stream import Delivery  # noqa: E402
from iotdefender.ingest.report import parse_report  # noqa: E402
from iotdefender.pipeline.detection import DetectionService  # noqa: E402
from iotdefender.pipeline.monitoring import MonitoringIndex  # noqa: E402
from iotdefender.pipeline.partition_store import PartitionBatchStore  # noqa: E402
from iotdefender.pipeline.report_message import ReportMessage, ReportOutcome, encode  # noqa: E402
from iotdefender.service import build_api  # noqa: E402
from iotdefender.settings import Settings  # noqa: E402
from iotdefender.store.database import create_engine  # noqa: E402
from tests.support.processes import PostgresCluster  # noqa: E402


class _Api:
    """bench/fleet_workload.configure's boto3 calls, on the in-process API."""

    def __init__(self, api: Any) -> None:
        self._api = api

    def __getattr__(self, name: str) -> Any:
        operation = "".join(part.capitalize() for part in name.split("_"))
        if operation == "CreateCustomMetric":  # boto3 fills the idempotency token in
            return lambda **params: self._api.invoke(operation, {"clientRequestToken": uuid.uuid4().hex, **params})
        return lambda **params: self._api.invoke(operation, params)


def prepared(url: str, data_dir: Path) -> str:
    api = build_api(Settings(data_dir=data_dir, database_url=url))
    fleet_workload.configure(_Api(api))
    api.context.engine.dispose()
    return url


async def offered(store: PartitionBatchStore, args: argparse.Namespace, first_id: int,
                  commits: list[float]) -> dict[str, Any]:
    things = [f"bench-{i}" for i in range(args.devices)]
    datapoints = parse_report(fleet_workload.report(1), "json", {"cpu": "number", "temperature": "number",
                                                                  "firmware": "string-list"}).datapoints
    queues: dict[int, deque[tuple[float, Delivery]]] = {p: deque() for p in range(PARTITION_COUNT)}
    arrived = {p: asyncio.Event() for p in range(PARTITION_COUNT)}
    latencies: list[float] = []
    waited: list[int] = []  # per report: the commits from its arrival to its own, that one included
    loop = asyncio.get_running_loop()
    adds = "more" in inspect.signature(store.handle).parameters
    total = int(args.rate * args.seconds)

    async def reader(partition: int) -> None:
        # As PartitionReader: all that came, then wait for its commit, what came meanwhile joining
        # the batch until the writer takes it (``more``), up to the reader's batch size.
        while True:
            await arrived[partition].wait()
            arrived[partition].clear()
            taken = list(queues[partition])[:args.batch]
            for _ in taken:
                queues[partition].popleft()
            if not taken:
                continue

            def more(accept: Any, taken: list[tuple[float, Delivery]] = taken) -> list[Delivery]:
                added: list[Delivery] = []
                while queues[partition] and len(taken) < args.batch and accept(queues[partition][0][1]):
                    taken.append(queues[partition].popleft())
                    added.append(taken[-1][1])
                return added

            if adds:
                await store.handle(partition, 1, [delivery for _, delivery in taken], more)
            else:  # a PartitionBatchStore from before readers could add to a waiting batch (A/B runs)
                await store.handle(partition, 1, [delivery for _, delivery in taken])
            now = loop.time()
            latencies.extend(now - at for at, _ in taken)
            waited.extend(bisect.bisect_right(commits, now) - bisect.bisect_right(commits, at) for at, _ in taken)
            if queues[partition]:
                arrived[partition].set()

    readers = [asyncio.create_task(reader(p)) for p in range(PARTITION_COUNT)]
    started = loop.time()
    for index in range(total):
        await asyncio.sleep(max(0.0, started + index / args.rate - loop.time()))
        thing = things[index % len(things)]
        report_id = first_id + index // len(things)
        message = ReportMessage(thing, datapoints, time.time(), report_id, "json", "iotdefender.replies.bench")
        partition = partition_of(thing)
        queues[partition].append((loop.time(), Delivery(partition, thing, encode(message), index + 1, 1)))
        arrived[partition].set()
    deadline = loop.time() + 30
    while len(latencies) < total and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    ordered = sorted(latencies)
    return {"reports": total, "committed": len(ordered), "reader_adds_to_waiting_batch": adds,
            "commits_waited_mean": round(statistics.fmean(waited), 2) if waited else None,
            "commits_waited_share": {f">={n}": round(sum(1 for w in waited if w >= n) / len(waited), 3)
                                     for n in (2, 3)} if waited else None,
            "p50_ms": round(1000 * ordered[len(ordered) // 2], 1) if ordered else None,
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1) if ordered else None,
            "mean_ms": round(1000 * statistics.fmean(ordered), 1) if ordered else None}


def _percentiles(seconds: list[float]) -> dict[str, float] | None:
    """p50 / p90 / p99 in ms."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return {f"p{q}": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 2) for q in (50, 90, 99)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    postgres = PostgresCluster()
    postgres.start()
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            url = prepared(postgres.create_database("writer"), Path(data_dir))
            engine = create_engine(url)
            monitoring = MonitoringIndex(engine, "arn:aws:iot:us-east-1:123456789012:")
            detection = DetectionService(engine, monitoring, AlertRoutes({}), 172800.0)
            transactions: list[int] = []

            commits: list[float] = []  # when each transaction's outcomes were told (committed)

            async def told(outcomes: list[ReportOutcome]) -> None:
                transactions.append(len(outcomes))
                commits.append(asyncio.get_running_loop().time())

            transaction_seconds: list[float] = []  # each committed transaction, from its start to its COMMIT's answer

            def timed_transaction(seconds: float, reports: int, windows: int = 0) -> None:
                transaction_seconds.append(seconds)

            store = PartitionBatchStore(monitoring, detection, lambda events: None, told,
                                        on_transaction=timed_transaction)
            for partition in range(PARTITION_COUNT):
                store.acquire(partition, 1)
            warm = argparse.Namespace(**{**vars(args), "seconds": max(1.0, args.devices / args.rate)})

            async def both() -> tuple[dict[str, Any], float]:  # one loop: the store's writer lives in it
                await offered(store, warm, 1_000, commits)  # every thing's first report (first sight), not measured
                transactions.clear()
                transaction_seconds.clear()
                cpu = time.process_time()
                measured = await offered(store, args, 1_000_000, commits)
                return measured, time.process_time() - cpu

            measured, cpu = asyncio.run(both())
            engine.dispose()
    finally:
        postgres.stop()
    return {"benchmark": "cluster-writer", "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": environment(), "rate": args.rate, "seconds": args.seconds, "devices": args.devices,
            **measured, "transactions": len(transactions),
            "reports_per_transaction": round(sum(transactions) / len(transactions), 1) if transactions else None,
            "transaction_ms": _percentiles(transaction_seconds),
            "cpu_s_per_1000_reports": round(1000 * cpu / measured["committed"], 3) if measured["committed"] else None,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--devices", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=256, help="a reader's batch size (DetectConsumer's)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    bounded(300)
    report(run(args), args.output)


if __name__ == "__main__":
    main()
