"""One device, one report at a time: publish -> ``accepted`` round trips, single box vs cluster.

A device that waits for each answer before it sends the next report (as AWS's agents and the
end-to-end tests do) sees the whole path's latency, with nothing to batch with. What runs, on
loopback, one configuration at a time: the single box (``iotdefender serve`` on PostgreSQL, its
default broker); one cluster node with every role; two cluster nodes with every role (the device
on the first, its thing owned by the first, then by the second). One nats-server (JetStream) and
one PostgreSQL serve all of them, a fresh database per configuration and source tree.

Per configuration the device (paho-mqtt, client id = thing name, QoS 1) sends ``--warmup`` reports
(not measured), then ``--reports`` more, each after the previous one's ``accepted``. Its socket has
TCP_NODELAY unless ``--nagle``: paho-mqtt leaves Nagle's algorithm on, so the report written right
after the PUBACK of the previous answer waits for the broker's delayed ACK (~40 ms on Linux) — a
client's cost, not the service's.

``--node-args`` are added to every node's command line (e.g. ``--metrics-window 1`` or the
end-to-end tests' ``--time-scale 36000``); ``--src`` DIR (repeatable) runs every configuration
once per source tree, alternating, the nodes started with PYTHONPATH=DIR (a before/after in one run).

    .venv/bin/python bench/sequential_latency.py [--reports 100] [--warmup 5] [--configs single one two]
        [--node-args "..."] [--src DIR ...] [--nagle] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import bounded, environment, report  # noqa: E402
from iotdefender.cluster.partitions import assignment, partition_of  # noqa: E402
from tests.e2e.test_cluster_serve import node_id  # noqa: E402
from tests.support.jetstream import SingleJetStream  # noqa: E402
from tests.support.mqtt import Device, report as metrics_report  # noqa: E402
from tests.support.processes import PostgresCluster, ServiceProcess, wait_for  # noqa: E402
from tests.support import plain_http  # noqa: E402

DEVICE_ARGS = ["--report-min-interval", "0"]


def owned_thing(owner: str, members: list[str], prefix: str) -> str:
    share = assignment(members)[owner]
    return next(name for name in (f"{prefix}-{i}" for i in range(10_000)) if partition_of(name) in share)


def owned_partitions(node: ServiceProcess) -> float:
    return sum(float(line.split()[-1]) for line in plain_http.get(node.endpoint + "/metrics", timeout=5).text.splitlines()
               if line.startswith("iotdefender_cluster_owned_partitions"))


def round_trips(port: int, thing: str, count: int, warmup: int, nagle: bool) -> list[float]:
    device = Device(port, thing)
    try:
        if not nagle:
            device.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for report_id in range(1, warmup + 1):
            assert device.report(metrics_report(report_id, [443]))[0] == "json/accepted"
        times = []
        for report_id in range(warmup + 1, warmup + count + 1):
            sent = time.perf_counter()
            outcome = device.report(metrics_report(report_id, [443]))[0]
            times.append(time.perf_counter() - sent)
            assert outcome == "json/accepted", outcome
        return times
    finally:
        device.close()


def figures(times: list[float]) -> dict[str, float]:
    ms = np.array(times) * 1000
    return {"n": len(times), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p90_ms": round(float(np.percentile(ms, 90)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1), "mean_ms": round(float(ms.mean()), 1),
            "over_50_ms": int((ms > 50).sum()), "over_200_ms": int((ms > 200).sum())}


class Run:
    def __init__(self, args: argparse.Namespace, postgres: PostgresCluster, nats: SingleJetStream, root: Path) -> None:
        self.args, self.postgres, self.nats, self.root = args, postgres, nats, root
        self.count = 0

    def node(self, src: str | None, cluster: bool, url: str) -> ServiceProcess:
        self.count += 1
        extra = [*DEVICE_ARGS, *shlex.split(self.args.node_args)]
        if cluster:
            extra += ["--cluster-url", self.nats.urls[0]]
        node = ServiceProcess(data_dir=self.root / f"n{self.count}", database_url=url, extra_args=extra)
        if src:
            node.env = {**node.env, "PYTHONPATH": os.pathsep.join([src, str(Path(__file__).resolve().parents[1])])}
        return node

    def trips(self, port: int, thing: str) -> dict[str, float]:
        return figures(round_trips(port, thing, self.args.reports, self.args.warmup, self.args.nagle))

    def single(self, src: str | None) -> dict[str, Any]:
        node = self.node(src, False, self.postgres.create_database(f"single{self.count}"))
        node.start()
        try:
            return {"single_box": self.trips(node.mqtt_port, "dev-single")}
        finally:
            node.stop()

    def one(self, src: str | None) -> dict[str, Any]:
        node = self.node(src, True, self.postgres.create_database(f"one{self.count}"))
        node.start()
        try:
            return {"cluster_one_node": self.trips(node.mqtt_port, f"dev-one-{self.count}")}
        finally:
            node.stop()

    def two(self, src: str | None) -> dict[str, Any]:
        url = self.postgres.create_database(f"two{self.count}")
        a, b = self.node(src, True, url), self.node(src, True, url)
        found: dict[str, Any] = {}
        try:
            a.start()
            b.start()
            members = sorted([node_id(a), node_id(b)])
            share = {n: len(assignment(members)[n]) for n in members}
            wait_for(lambda: [owned_partitions(a), owned_partitions(b)] == [share[node_id(a)], share[node_id(b)]],
                     60, "both shares owned")
            for owner, label in ((node_id(a), "cluster_two_nodes_owned_here"),
                                 (node_id(b), "cluster_two_nodes_owned_by_other")):
                found[label] = self.trips(a.mqtt_port, owned_thing(owner, members, f"{label}-{self.count}"))
            return found
        finally:
            b.stop()
            a.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="iotdefender-seq-"))
    postgres, nats = PostgresCluster(), SingleJetStream()
    results: dict[str, Any] = {}
    postgres.start()
    nats.start()
    try:
        trial = Run(args, postgres, nats, root)
        for config in args.configs:
            for src in args.src or [None]:
                figures_of = getattr(trial, config)(src)
                results.setdefault(src or "installed", {}).update(figures_of)
                print(json.dumps({"src": src, **figures_of}), file=sys.stderr, flush=True)
    finally:
        nats.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--reports", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--configs", nargs="+", choices=["single", "one", "two"], default=["single", "one", "two"])
    parser.add_argument("--node-args", default="", help="more arguments of every node, one string")
    parser.add_argument("--src", action="append", help="a source tree to run the nodes from (repeatable)")
    parser.add_argument("--nagle", action="store_true", help="leave the device's socket as paho-mqtt opens it")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    bounded(1800)
    result = {"benchmark": "sequential_latency", "command": " ".join(sys.argv), "machine": environment(),
              "load_average_at_start": os.getloadavg(), "reports": args.reports, "node_args": args.node_args,
              "nagle": args.nagle, "results": run(args)}
    result["load_average_at_end"] = os.getloadavg()
    report(result, args.output)


if __name__ == "__main__":
    main()
