"""What a detect node's reports wait for when a window's cloud parts arrive, through the real readers.

At a window's end a broker node publishes its part of every device's window to the devices'
partitions (cloud/cluster_windows.py), and the partitions' detect node keeps them in PostgreSQL
before it acks them. The reports that keep arriving meanwhile wait for that keep when the parts are
handled in the reader's batches (``--aside off``, the code before ``report_stream.Aside``), and do
not when the reader sets them aside (``--aside on``, what ``serve`` runs).

What runs, for each mode, on fresh servers (one ``nats-server -js``, one PostgreSQL, fsync on, on
loopback) and a fresh database at head:

- this process: a detect node's 64 ``PartitionReader``s of the project's stream, each with the
  ``WindowCollector``'s handler (and ``aside`` when on), as ``cluster_serve.detect_role`` builds
  them. The reports' handler is a group commit that checks the fences of the partitions whose
  reports wait together in one transaction, as ``PartitionBatchStore.store_many`` does (the
  report rows themselves are left out: what is measured is the wait behind the parts);
- a process sending reports to every partition, one each ``--report-every`` seconds a partition
  (640 reports/s at 0.1 s: 200,000 devices reporting every 5 minutes), timestamped;
- a process that, ``--parts-after`` seconds in, publishes one broker node's parts of a window of
  ``--devices`` devices (``WindowPublisher.publish_due``, batched) and its ends.

Timed: each report's wait from its publish to the commit of its batch, for the reports published
from the parts' first publish until every part was kept ("at the window's end"), and for the
others; and how long the parts took to be kept. A report's wait includes JetStream's delivery and
the reader's fetch.

    .venv/bin/python bench/window_end_reports.py [--devices 200000] [--aside on off] [--repeat 2]
        [--seconds 30] [--output PATH]

Writes bench/results/window-end-reports-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SetClock, bounded, environment, migrated_and_owned  # noqa: E402
from iotdefender.cloud.cluster_windows import WindowCollector, WindowPublisher  # noqa: E402
from iotdefender.cloud.service import CloudEventIntake  # noqa: E402
from iotdefender.cluster import fencing  # noqa: E402
from iotdefender.cluster.partitions import PARTITION_COUNT, partition_of  # noqa: E402
from iotdefender.cluster.report_stream import Delivery, More, PartitionReader, ReportPublisher  # noqa: E402
from iotdefender.cluster.topology import Topology, ensure  # noqa: E402
from iotdefender.pipeline.group_commit import GroupCommit  # noqa: E402
from iotdefender.store.database import writing  # noqa: E402
from tests.support.jetstream import SingleJetStream  # noqa: E402
from tests.support.processes import PostgresCluster  # noqa: E402

RESULTS = Path(__file__).with_name("results")
WINDOW_S = 300.0
WINDOW = 1_000_000  # the window the parts are of (a fixed clock: the same in every run)
TOKEN = 1


def _thing_of(partition: int) -> str:
    return next(name for i in range(10_000) if partition_of(name := f"reporter-{i}") == partition)


def send_reports(urls: list[str], every_s: float, seconds: float, started_at: float, acked: Any) -> None:
    """One report a partition every ``every_s``, from ``started_at`` for ``seconds`` (a process);
    puts {message id: when JetStream acked it} on ``acked`` at the end."""
    stored: dict[str, float] = {}
    async def go() -> None:
        nc = await nats.connect(urls)
        publisher = ReportPublisher(nc.jetstream(), Topology())

        async def partition_loop(partition: int) -> None:
            thing = _thing_of(partition)
            n = 0
            while time.time() < started_at + seconds:
                due = started_at + n * every_s + partition * every_s / PARTITION_COUNT
                await asyncio.sleep(max(0.0, due - time.time()))
                message_id = f"{thing}/{n}"
                await publisher.publish(thing, json.dumps({"sent": time.time(), "id": message_id}).encode(),
                                        message_id)
                stored[message_id] = time.time()
                n += 1

        await asyncio.gather(*(partition_loop(p) for p in range(PARTITION_COUNT)))
        await nc.close()
    asyncio.run(go())
    acked.put(stored)


def send_parts(urls: list[str], devices: int, at: float, done: Any) -> None:
    """One broker node's parts of window ``WINDOW`` for ``devices`` devices, published at ``at``
    (a process); puts (first publish, last publish) on ``done``."""
    async def go() -> None:
        nc = await nats.connect(urls)
        publisher = ReportPublisher(nc.jetstream(), Topology())
        clock = SetClock(WINDOW * WINDOW_S + 10)
        window_publisher = WindowPublisher(CloudEventIntake(WINDOW_S, clock), publisher.publish, "node-a",
                                           clock=clock, publish_end=publisher.publish_to,
                                           publish_parts=publisher.publish_to)
        for index in range(devices):
            window_publisher.intake.message_sent(f"device-{index:07d}", "telemetry", 200)
        clock.now = (WINDOW + 1) * WINDOW_S + 0.2
        await asyncio.sleep(max(0.0, at - time.time()))
        first = time.time()
        published = await window_publisher.publish_due()
        done.put((first, time.time(), published))
        await nc.close()
    asyncio.run(go())


async def read(urls: list[str], engine: Any, aside: bool, until: float, devices: int
               ) -> tuple[list[tuple[float, str, float, float]], float | None, list[tuple[float, float]],
                                          list[tuple[float, float]]]:
    """The detect node's readers until ``until`` and every part kept: each report's (publish,
    handed to the reports' handler, commit), when the last part was kept, and the event loop's lags."""
    nc = await nats.connect(urls)
    js = nc.jetstream()
    topology = Topology()
    collector = WindowCollector(None, None, lambda events: None, lambda: {p: TOKEN for p in range(PARTITION_COUNT)},  # type: ignore[arg-type]
                                WINDOW_S, engine, clock=SetClock((WINDOW + 1) * WINDOW_S + 0.5))
    for partition in range(PARTITION_COUNT):
        collector.acquire(partition)
    waits: list[tuple[float, str, float, float]] = []

    transactions: list[tuple[float, float]] = []  # (when, seconds) of each reports' transaction

    def store_reports(partitions: Sequence[int]) -> list[None]:
        began = time.perf_counter()
        with writing(engine) as conn:
            fencing.check_all(conn, {partition: TOKEN for partition in partitions})
        transactions.append((time.time(), time.perf_counter() - began))
        return [None] * len(partitions)

    reports: GroupCommit[int, None] = GroupCommit(store_reports, "bench-reports")

    async def handle_reports(partition: int, token: int, batch: Sequence[Delivery], more: More) -> None:
        handed = time.time()
        batch = [*batch, *more(lambda d: True)]
        await reports(partition)
        done = time.time()
        for d in batch:
            report = json.loads(d.payload)
            waits.append((report["sent"], report["id"], handed, done))

    lags: list[tuple[float, float]] = []  # (when, how late a 10 ms sleep woke): the event loop held up

    async def watch_loop() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append((time.time(), time.perf_counter() - before - 0.01))

    watching = asyncio.create_task(watch_loop())
    handler = collector.handler(handle_reports)
    # ``aside`` only when on: off, the bench runs on a tree from before it too (PYTHONPATH=<tree>/src).
    options = {"aside": collector.aside()} if aside else {}
    readers = [PartitionReader(js, topology, p, handler, TOKEN, lambda: True, batch=256, **options)
               for p in range(PARTITION_COUNT)]
    for reader in readers:
        await reader.start()
    kept_at = None
    while True:
        await asyncio.sleep(0.05)
        held = sum(len(things) for windows in collector._parts.values() for things in windows.values())
        if kept_at is None and held >= devices:
            kept_at = time.time()
        if time.time() >= until and kept_at is not None:
            break
    for reader in readers:
        await reader.stop()
    watching.cancel()
    await nc.close()
    return waits, kept_at, lags, transactions


def _lag(lags: Sequence[float]) -> dict[str, float]:
    """How late the event loop woke a 10 ms sleep: the longest, and in all (what the loop was busy)."""
    return {"longest_s": round(max(lags, default=0.0), 4), "total_s": round(sum(lags), 3)}


def _summary(waits: Sequence[tuple[float, float, float]]) -> dict[str, Any]:
    """Each report's wait until its commit, the part of it until it was handed to the reports'
    handler (JetStream's delivery and the reader: what the parts held up when kept in the batch),
    and until JetStream acked its publish (the parts' publishing slows the server)."""
    if not waits:
        return {"reports": 0}

    def spread(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {"median_s": round(statistics.median(ordered), 4),
                "p99_s": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 4),
                "max_s": round(ordered[-1], 4)}
    return {"reports": len(waits), **spread([total for total, _, _ in waits]),
            "until_handed": spread([handed for _, handed, _ in waits]),
            "until_stored": spread([stored for _, _, stored in waits])}


def run(devices: int, aside: bool, seconds: float, parts_after: float, every_s: float) -> dict[str, Any]:
    jetstream, postgres = SingleJetStream(), PostgresCluster()
    jetstream.start()
    postgres.start()
    spawn = multiprocessing.get_context("spawn")
    try:
        url, engine = migrated_and_owned(postgres, "windowend", TOKEN)

        async def topology() -> None:
            nc = await nats.connect(jetstream.urls)
            await ensure(nc.jetstream(), Topology())
            await nc.close()
        asyncio.run(topology())
        started = time.time() + 3.0  # the processes' imports
        done = spawn.Queue()
        acked = spawn.Queue()
        sender = spawn.Process(target=send_reports, args=(jetstream.urls, every_s, seconds, started, acked))
        parts = spawn.Process(target=send_parts, args=(jetstream.urls, devices, started + parts_after, done))
        sender.start()
        parts.start()
        waits, kept_at, lags, transactions = asyncio.run(read(jetstream.urls, engine, aside, started + seconds + 1.0, devices))
        first, last, published = done.get(timeout=60)
        stored = acked.get(timeout=60)
        sender.join(30)
        parts.join(30)
        with engine.connect() as conn:
            sets = conn.execute(sa.text("SELECT count(*) FROM cluster_cloud_part_sets")).scalar()
        engine.dispose()
        assert kept_at is not None
        timed = [(commit - sent, handed - sent, stored[key] - sent, sent) for sent, key, handed, commit in waits]
        during = [wait[:3] for wait in timed if first <= wait[3] <= kept_at]
        outside = [wait[:3] for wait in timed if not first <= wait[3] <= kept_at]
        return {"devices": devices, "aside": aside, "parts_published": published,
                "parts_publish_s": round(last - first, 2), "parts_all_kept_after_first_publish_s": round(kept_at - first, 2),
                "part_set_rows": sets, "reports_at_the_window_end": _summary(during),
                "event_loop_lag_at_the_window_end": _lag([lag for at, lag in lags if first <= at <= kept_at]),
                "reports_transactions_at_the_window_end": _lag([held for at, held in transactions
                                                               if first <= at <= kept_at]),
                "reports_otherwise": _summary(outside)}
    finally:
        jetstream.stop()
        postgres.stop()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200_000)
    parser.add_argument("--aside", nargs="+", choices=["on", "off"], default=["off", "on"])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each mode, alternating")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long reports are sent")
    parser.add_argument("--parts-after", type=float, default=8.0, help="seconds into the reports")
    parser.add_argument("--report-every", type=float, default=0.1, help="seconds between a partition's reports")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--max-seconds", type=int, default=1800)
    args = parser.parse_args(argv)
    bounded(args.max_seconds)
    started = datetime.datetime.now(datetime.timezone.utc)
    runs = []
    for _ in range(args.repeat):
        for mode in args.aside:
            runs.append(run(args.devices, mode == "on", args.seconds, args.parts_after, args.report_every))
            print(json.dumps(runs[-1]), flush=True)
    result = {"benchmark": "window_end_reports", "date": started.isoformat(), "command": " ".join(sys.argv),
              "machine": environment(), "load_average_before": os.getloadavg(), "runs": runs,
              "load_average_after": os.getloadavg()}
    output = args.output or RESULTS / f"window-end-reports-{started:%Y-%m-%d}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
