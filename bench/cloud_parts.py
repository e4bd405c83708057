"""A cluster's cloud-side metrics at fleet size: what a broker node's window parts cost when a
window ends (cloud/cluster_windows.py).

A broker node publishes, when a window ends, its part of the window of every device it saw in it
to the device's partition on the report stream: one message per device (``one-by-one``, what a
node of a release before batches reads) or a few batches per partition (``batched``:
``CloudWindowParts``). Each partition's detect node keeps the parts in PostgreSQL
(``cluster_parts.keep``, fenced) before it acks the messages, one transaction per reader batch
(256 messages). Both must be done well within the window, and the publishing within the
publisher's 8 s retry time: parts left when it passes are given up
(``…_parts_unpublished_total``) and the window is incomplete for their partitions.

What runs: one ``nats-server -js`` and one PostgreSQL (fsync on) on loopback, the project's
stream (``topology.ensure``). ``--devices`` devices each with one message in one window, then, for
each ``--modes`` on fresh servers:

1. **publish**: ``WindowPublisher.publish_due`` through a ``ReportPublisher`` (as a broker node
   does), wall time, parts published and given up, this process's and nats-server's CPU;
2. **keep**: the same messages decoded and kept as a detect node keeps them
   (``WindowCollector.keep``: fence check and upsert per batch of 256 of one partition), wall
   time and PostgreSQL's CPU;
3. **grouped keep**: the same parts again (under a new fence token) through the group commit the
   partitions' handler uses (``keep_many``): every partition's reader hands its batches over
   one after the other, all partitions at once, and the batches waiting together go in one
   transaction;
4. **reports at a window's end**: the grouped keep once more while reports keep arriving (one a
   partition every 0.1 s), each reader taking the reports that arrived when it fetches a batch,
   storing them after the batch's parts are kept (as the partitions' handler does) in a
   transaction that checks the fences of the partitions whose reports wait together (as
   ``PartitionBatchStore.store_many`` does; the report rows themselves are left out), and fetching
   its next batch once that is done. Timed: each report's wait from its arrival to its commit.

    .venv/bin/python bench/cloud_parts.py [--devices 20000 100000 200000] [--modes one-by-one batched]
        [--parts-per-transaction N] [--kept rows|sets] [--output PATH]

Writes bench/results/cloud-parts-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SetClock, bounded, environment  # noqa: E402
from bench.process_usage import cpu_seconds, tree  # noqa: E402
from iotdefender.cloud.cluster_windows import (PARTS_LOST, CloudWindowMessage, CloudWindowParts,  # noqa: E402
                                               Keep, WindowCollector, WindowPublisher, decode)
from iotdefender.cloud.service import CloudEventIntake  # noqa: E402
from iotdefender.cloud import cluster_windows  # noqa: E402
from iotdefender.cluster import fencing  # noqa: E402
from iotdefender.cluster.partitions import PARTITION_COUNT, partition_of  # noqa: E402
from iotdefender.cluster.report_stream import ReportPublisher  # noqa: E402
from iotdefender.cluster.topology import Topology, ensure  # noqa: E402
from iotdefender.pipeline.group_commit import GroupCommit  # noqa: E402
from iotdefender.service import build_api  # noqa: E402
from iotdefender.settings import Settings  # noqa: E402
from iotdefender.store.database import create_engine, writing  # noqa: E402
from tests.support.jetstream import SingleJetStream  # noqa: E402
from tests.support.processes import PostgresCluster  # noqa: E402

RESULTS = Path(__file__).with_name("results")
WINDOW_S = 300.0
READER_BATCH = 256
KEPT = "sets"  # --kept: how a detect node keeps the parts (a row per part: the release before)
REPORT_EVERY_S = 0.1  # per partition: ~640 reports/s a node, 200,000 devices reporting every 5 min


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def publish(devices: int, batched: bool, urls: list[str], nats_pid: int
                  ) -> tuple[dict[str, Any], list[tuple[int, bytes]]]:
    nc = await nats.connect(urls)
    try:
        js = nc.jetstream()
        topology = Topology()
        await ensure(js, topology)
        publisher = ReportPublisher(js, topology)
        sent: list[tuple[int, bytes]] = []

        async def publish_part(thing: str, payload: bytes, message_id: str) -> Any:
            acked = await publisher.publish(thing, payload, message_id)
            sent.append((partition_of(thing), payload))
            return acked

        async def publish_parts(partition: int, payload: bytes, message_id: str) -> Any:
            acked = await publisher.publish_to(partition, payload, message_id)
            sent.append((partition, payload))
            return acked

        clock = SetClock(1_000_000 * WINDOW_S + 10)
        window_publisher = WindowPublisher(CloudEventIntake(WINDOW_S, clock), publish_part, "node-a", clock=clock,
                                           publish_end=publisher.publish_to,
                                           publish_parts=publish_parts if batched else None)
        for index in range(devices):
            window_publisher.intake.message_sent(f"device-{index:07d}", "telemetry", 200)
        clock.now = (1_000_000 + 1) * WINDOW_S + 0.2
        lost_before = PARTS_LOST._value.get()
        own, server = _cpu([os.getpid()]), _cpu([nats_pid])
        started = time.perf_counter()
        published = await window_publisher.publish_due()
        elapsed = time.perf_counter() - started
        return {"devices": devices, "mode": "batched" if batched else "one-by-one", "messages": len(sent),
                "published": published,
                "given_up": int(PARTS_LOST._value.get() - lost_before), "publish_s": round(elapsed, 2),
                "parts_per_s": round(published / elapsed) if elapsed else None,
                "publisher_cpu_s": round(_cpu([os.getpid()]) - own, 2),
                "nats_server_cpu_s": round(_cpu([nats_pid]) - server, 2)}, sent
    finally:
        await nc.close()


def keep(url: str, sent: list[tuple[int, bytes]], postmaster: int) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        with writing(engine) as conn:
            for partition in range(PARTITION_COUNT):
                fencing.claim(conn, partition, 1)
        # A reader batch is 256 messages, each one device's part or a batch of a partition's parts.
        batches: list[tuple[int, list[CloudWindowMessage]]] = []
        by_partition: dict[int, list[bytes]] = {}
        for partition, payload in sent:
            by_partition.setdefault(partition, []).append(payload)
        for partition, payloads in by_partition.items():
            for start in range(0, len(payloads), READER_BATCH):
                messages: list[CloudWindowMessage] = []
                for payload in payloads[start:start + READER_BATCH]:
                    message = decode(payload)
                    assert isinstance(message, (CloudWindowMessage, CloudWindowParts))
                    messages.extend(message.messages() if isinstance(message, CloudWindowParts) else [message])
                batches.append((partition, messages))
        postgres_pids = tree(postmaster)  # with this engine's connection open: its backend is among them
        collector = WindowCollector(None, None, lambda events: None, lambda: {}, WINDOW_S, engine,  # type: ignore[arg-type]
                                    sets_readable=lambda: KEPT == "sets")
        own, database = _cpu([os.getpid()]), _cpu(postgres_pids)
        started = time.perf_counter()
        for partition, messages in batches:
            collector.keep(partition, 1, messages)
        elapsed = time.perf_counter() - started
        kept = sum(len(messages) for _, messages in batches)
        result = {"kept": kept, "transactions": len(batches), "keep_s": round(elapsed, 2),
                  "parts_kept_per_s": round(kept / elapsed) if elapsed else None,
                  "keeper_cpu_s": round(_cpu([os.getpid()]) - own, 2),
                  "postgresql_cpu_s": round(_cpu(postgres_pids) - database, 2)}
        with writing(engine) as conn:  # the same parts again, grouped: each replaces its copy
            for partition in range(PARTITION_COUNT):
                fencing.claim(conn, partition, 2)
        own, database = _cpu([os.getpid()]), _cpu(postgres_pids)
        started = time.perf_counter()
        held = asyncio.run(keep_grouped(collector, batches))
        elapsed = time.perf_counter() - started
        result.update({"grouped_transactions": len(held), "grouped_longest_transaction_s": round(max(held), 2),
                       "grouped_keep_s": round(elapsed, 2),
                       "grouped_parts_kept_per_s": round(kept / elapsed) if elapsed else None,
                       "grouped_keeper_cpu_s": round(_cpu([os.getpid()]) - own, 2),
                       "grouped_postgresql_cpu_s": round(_cpu(postgres_pids) - database, 2)})
        with writing(engine) as conn:
            for partition in range(PARTITION_COUNT):
                fencing.claim(conn, partition, 3)
        waits = asyncio.run(reports_at_the_window_end(collector, engine, batches, 3))
        result["reports_at_the_window_end_wait_s"] = {
            "median": round(statistics.median(waits), 3),
            "p99": round(statistics.quantiles(waits, n=100)[98], 3) if len(waits) > 1 else round(waits[0], 3),
            "max": round(max(waits), 3), "reports": len(waits)}
        return result
    finally:
        engine.dispose()


async def reports_at_the_window_end(collector: WindowCollector, engine: Any,
                                    batches: list[tuple[int, list[CloudWindowMessage]]], token: int) -> list[float]:
    """Every partition's reader hands its batches of parts over one after the other, all partitions
    at once, while reports keep arriving in every partition (one each ``REPORT_EVERY_S``, from the
    window's end on). A reader's batch takes the reports that arrived by the time it is fetched;
    they are stored after its parts are kept, and the next batch is fetched once they are (a
    reader acks a batch before it fetches the next). Until the last parts are kept, and one batch
    more for what arrived by then. Returns each report's seconds from its arrival to its commit.
    (Storing a batch's reports beside its parts, tried on 2026-12-01, changed nothing here: the
    reports that arrive while the parts are kept wait for the batch either way.)"""
    def store_reports(partitions: Sequence[int]) -> list[None]:
        with writing(engine) as conn:  # the fences the report group's transaction locks
            fencing.check_all(conn, {partition: token for partition in partitions})
        return [None] * len(partitions)

    keeps: GroupCommit[Keep, None] = GroupCommit(collector.keep_many, "bench-window-part-keeper")
    reports: GroupCommit[int, None] = GroupCommit(store_reports, "bench-reports")
    waits: list[float] = []
    by_partition: dict[int, list[list[CloudWindowMessage]]] = {}
    for partition, messages in batches:
        by_partition.setdefault(partition, []).append(messages)
    began = time.perf_counter()

    async def reader(partition: int, its_batches: list[list[CloudWindowMessage]]) -> None:
        handled = 0  # the reports handled so far: the k-th arrives at began + k * REPORT_EVERY_S
        pending = list(its_batches)
        while True:
            arrived = int((time.perf_counter() - began) // REPORT_EVERY_S) + 1
            in_hand = range(handled, arrived)
            parts = pending.pop(0) if pending else None

            async def stored() -> None:
                if in_hand:
                    await reports(partition)
                    done = time.perf_counter()
                    waits.extend(done - (began + k * REPORT_EVERY_S) for k in in_hand)

            if parts is not None:
                await keeps((partition, token, parts, []))
            await stored()
            handled = arrived
            if parts is None:
                return

    await asyncio.gather(*(reader(partition, its) for partition, its in by_partition.items()))
    return waits


async def keep_grouped(collector: WindowCollector, batches: list[tuple[int, list[CloudWindowMessage]]]
                       ) -> list[float]:
    """Every partition's reader hands its batches over one after the other, all partitions at once,
    through the collector's group commit (``keep_many``), as the partitions' handler does; returns
    how long each transaction took."""
    # Each transaction timed: it holds the fence rows of its partitions, which their report
    # batches wait for (the instance's own method wrapped, this process only).
    held: list[float] = []

    def timed(transaction: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return transaction(*args)
            finally:
                held.append(time.perf_counter() - started)
        return run

    # several keeps together, or one alone
    collector._keep_together = timed(collector._keep_together)  # type: ignore[method-assign]
    collector.keep = timed(collector.keep)  # type: ignore[method-assign]
    group: GroupCommit[Keep, None] = GroupCommit(collector.keep_many, "bench-window-part-keeper")
    by_partition: dict[int, list[list[CloudWindowMessage]]] = {}
    for partition, messages in batches:
        by_partition.setdefault(partition, []).append(messages)

    async def reader(partition: int, its_batches: list[list[CloudWindowMessage]]) -> None:
        for messages in its_batches:
            await group((partition, 2, messages, []))

    await asyncio.gather(*(reader(partition, its) for partition, its in by_partition.items()))
    return held


def run(devices: int, mode: str) -> dict[str, Any]:
    jetstream, postgres = SingleJetStream(), PostgresCluster()
    jetstream.start()
    postgres.start()
    try:
        assert jetstream.server.process is not None
        url = postgres.create_database(f"parts{devices}")
        with tempfile.TemporaryDirectory() as data_dir:
            build_api(Settings(data_dir=Path(data_dir), database_url=url)).context.engine.dispose()  # migrations
        published, sent = asyncio.run(publish(devices, mode == "batched", jetstream.urls,
                                              jetstream.server.process.pid))
        postmaster = int((postgres.datadir / "postmaster.pid").read_text().split()[0])
        return {**published, **keep(url, sent, postmaster)}
    finally:
        jetstream.stop()
        postgres.stop()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[20_000, 100_000, 200_000])
    parser.add_argument("--modes", nargs="+", choices=["one-by-one", "batched"], default=["one-by-one", "batched"])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--parts-per-transaction", type=int,
                        help="the grouped keep's bound (cluster_windows.PARTS_PER_TRANSACTION; 1000000000: one "
                             "transaction for all that wait, as before the bound)")
    parser.add_argument("--max-seconds", type=int, default=900)
    parser.add_argument("--kept", choices=["rows", "sets"], default="sets",
                        help="parts kept a row per part (as while a node of the release before lives) or a set per row")
    args = parser.parse_args(argv)
    global KEPT
    KEPT = args.kept
    bounded(args.max_seconds)
    if args.parts_per_transaction is not None:
        cluster_windows.PARTS_PER_TRANSACTION = args.parts_per_transaction
    started = datetime.datetime.now(datetime.timezone.utc)
    result = {"benchmark": "cloud_parts", "date": started.isoformat(), "command": " ".join(sys.argv),
              "machine": environment(), "load_average_before": os.getloadavg(),
              "parts_per_transaction": cluster_windows.PARTS_PER_TRANSACTION, "kept": KEPT,
              "runs": [run(devices, mode) for devices in args.devices for mode in args.modes],
              "load_average_after": os.getloadavg()}
    output = args.output or RESULTS / f"cloud-parts-{started:%Y-%m-%d}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key != "machine"}))
    return result


if __name__ == "__main__":
    main()
