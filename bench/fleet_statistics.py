"""Fleet-wide statistical thresholds in cluster mode at fleet size: what a window's exchange costs.

Two measurements, each of two source trees taking turns in fresh processes (``--trees``: this one
and, say, a worktree of the code before), so a shared machine's noise hits both alike:

* **detection**: a detect node holding ``fleet / nodes`` devices (those of its partitions) receives the other nodes' values of
  the window that just ended, in the parts ``KvSharedWindows.publish`` cuts them into (NATS' 1 MB
  ``max_payload``), the nodes' parts interleaved as if they published at once, and between two
  parts one datapoint asks for the threshold (the engine's ``FleetStatistics.threshold``, under the
  detection lock in the service). Reported: the CPU of receiving (the event loop's) and of the
  threshold calls (the detection thread's), and whether the last threshold is the one box's.
* **bucket**: one node publishes ``--windows`` consecutive windows of ``--bucket-devices`` devices to
  a real nats-server's KV bucket; reported: what the bucket then holds, and how long a node that
  starts takes to have the newest window whole (it reads the bucket's entries through its watch).

    .venv/bin/python bench/fleet_statistics.py --trees . /tmp/before [--sizes 1000000:4 2000000:8]
        [--bucket-devices 300000] [--windows 12] [--repeats 3] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import environment, report, run_in_tree, tree_arguments, tree_revision  # noqa: E402
KEY = ("fleet", "bytes-out")
WINDOW_S = 300.0


def detection(fleet: int, nodes: int) -> dict[str, Any]:
    import inspect

    import numpy as np

    from iotdefender.cluster.fleet_statistics import VALUES_MAX_BYTES, KvSharedWindows, _decoder
    from iotdefender.cluster.partitions import partition_of
    from iotdefender.engine.statistics import FleetStatistics, StatisticsChanges

    # As in a cluster: each node holds the devices of its partitions (node i: partitions p with
    # p % nodes == i). A tree whose publishes name their partitions is given them, as serve does.
    rng = random.Random(1)
    devices: list[list[str]] = [[] for _ in range(nodes)]
    for n in range(fleet):
        name = f"thing-{n:08d}"
        devices[partition_of(name) % nodes].append(name)
    parameters = inspect.signature(KvSharedWindows).parameters
    options: dict[str, Any] = {"partition_of": partition_of} if "partition_of" in parameters else {}
    if "compact" in parameters:
        options["compact"] = lambda: True  # every node of the tree reads it
    shared = KvSharedWindows("node-0", **options)
    stats = FleetStatistics(shared=shared)
    window = 10
    changes: StatisticsChanges = {}
    everyone: list[float] = []
    for name in devices[0]:
        value = rng.lognormvariate(8, 1)
        everyone.append(value)
        stats.observe(KEY, "p90", WINDOW_S, name, value, window * WINDOW_S + 5, changes)
    stats.apply(changes)
    now = (window + 1) * WINDOW_S + 1

    def threshold() -> tuple[float, int] | None:
        asked: StatisticsChanges = {}
        found = stats.threshold(KEY, "p90", WINDOW_S, now, asked)
        stats.apply(asked)
        return found

    threshold()
    queues: list[list[bytes]] = []

    class Bucket:  # what a node puts in the KV bucket, in order
        def __init__(self) -> None:
            self.put_values: list[bytes] = []

        async def put(self, key: str, value: bytes) -> None:
            self.put_values.append(value)

    for node in range(1, nodes):
        values = {name: rng.lognormvariate(8, 1) for name in devices[node]}
        everyone.extend(values.values())
        publisher = KvSharedWindows(f"node-{node}", VALUES_MAX_BYTES, **options)
        publisher._kv = bucket = Bucket()  # the node's own publish, as serve makes it
        asyncio.run(publisher.publish(KEY, window, values))
        queues.append(bucket.put_values)
    arrivals = [index for index, queue in enumerate(queues) for _ in queue]
    rng.shuffle(arrivals)  # each node's parts in order, the nodes' interleaved
    receiving = thresholds = 0.0
    found = None
    for index in arrivals:
        began = time.process_time()
        shared.received(_decoder.decode(queues[index].pop(0)))
        receiving += time.process_time() - began
        began = time.process_time()
        found = threshold()
        thresholds += time.process_time() - began
    expected = float(np.percentile(np.array(everyone), 90))
    return {"fleet": fleet, "nodes": nodes, "parts": len(arrivals), "receive_cpu_s": round(receiving, 3),
            "threshold_cpu_s": round(thresholds, 3),
            "last_threshold_is_the_one_box": found is not None and found[1] == fleet and found[0] == expected}


async def bucket(url: str, devices: int, windows: int) -> dict[str, Any]:
    import nats
    import nats.js.errors

    from iotdefender.cluster.fleet_statistics import BUCKET, KvSharedWindows
    from iotdefender.message_size import payload_limit

    nc, late_nc = await nats.connect(url), await nats.connect(url)
    js = nc.jetstream()
    try:
        await js.delete_key_value(BUCKET)
    except nats.js.errors.NotFoundError:
        pass
    publisher = KvSharedWindows("publisher", payload_limit(nc.max_payload))
    await publisher.start(js, 1)
    values = {f"thing-{n:08d}": float(n % 977) for n in range(devices)}
    began = time.perf_counter()
    for window in range(100, 100 + windows):
        await publisher.publish(KEY, window, values)
    publishing = time.perf_counter() - began
    await publisher.stop()
    state = (await js.stream_info(f"KV_{BUCKET}")).state
    late = KvSharedWindows("late")
    began, cpu = time.perf_counter(), time.process_time()
    await late.start(late_nc.jetstream(), 1)
    newest = 100 + windows - 1
    while len(late.others(KEY, newest)[1]) != devices:
        await asyncio.sleep(0.1)
    result = {"devices": devices, "windows": windows, "publish_all_s": round(publishing, 2),
              "bucket_bytes": state.bytes, "bucket_messages": state.messages,
              "late_node_newest_window_whole_s": round(time.perf_counter() - began, 2),
              "late_node_cpu_s": round(time.process_time() - cpu, 2)}
    await late.stop()
    await nc.close()
    await late_nc.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1000000:4", "2000000:8"], help="fleet:detect nodes")
    parser.add_argument("--bucket-devices", type=int, default=300_000)
    parser.add_argument("--windows", type=int, default=12)
    tree_arguments(parser, repeats=3)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "detection":
            print(json.dumps(detection(int(rest[0]), int(rest[1]))))
        else:
            print(json.dumps(asyncio.run(bucket(rest[0], int(rest[1]), int(rest[2])))))
        return

    from tests.support.jetstream import SingleJetStream

    trees = {str(tree): tree for tree in args.trees}
    runs: dict[str, Any] = {name: {"detection": {}, "bucket": []} for name in trees}
    for size in args.sizes:
        fleet, nodes = size.split(":")
        for _ in range(args.repeats):
            for name, tree in trees.items():
                measured = run_in_tree(tree, __file__, ["detection", fleet, nodes])
                runs[name]["detection"].setdefault(size, []).append(measured)
                print(name, measured, file=sys.stderr, flush=True)
    server = SingleJetStream()
    server.start()
    try:
        for _ in range(args.repeats):
            for name, tree in trees.items():
                measured = run_in_tree(tree, __file__, ["bucket", server.urls[0], str(args.bucket_devices), str(args.windows)])
                runs[name]["bucket"].append(measured)
                print(name, measured, file=sys.stderr, flush=True)
    finally:
        server.stop()
    summary: dict[str, Any] = {}
    for name, measured in runs.items():
        summary[name] = {
            "detection": {size: {field: statistics.median(run[field] for run in done)
                                 for field in ("parts", "receive_cpu_s", "threshold_cpu_s")}
                          | {"one_box_threshold": all(run["last_threshold_is_the_one_box"] for run in done)}
                          for size, done in measured["detection"].items()},
            "bucket": {field: statistics.median(run[field] for run in measured["bucket"])
                       for field in ("bucket_bytes", "bucket_messages", "late_node_newest_window_whole_s",
                                     "late_node_cpu_s", "publish_all_s")}}
    report({"machine": environment(), "command": " ".join(sys.argv), "load_average": list(os.getloadavg()[:2]),
            "trees": {name: tree_revision(tree) for name, tree in trees.items()},
            "summary": summary, "runs": runs}, args.output)


if __name__ == "__main__":
    main()
