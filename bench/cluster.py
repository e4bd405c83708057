"""Cluster mode under a fleet: real ``iotdefender serve --cluster-url`` processes, and one box beside it.

What runs, all on loopback and in temporary directories: one ``nats-server -js``, one PostgreSQL
(fsync on), two broker nodes (``--roles broker,api``: Mosquitto child, ingest, the AWS API) and N
detect nodes (``--roles detect``), with the fleet of bench/pipeline.py (one MQTT connection per
device, client id = thing name, its own QoS 1 reply subscription, ``--mqtt-acl own``, 3 profiles x
10 behaviors, 1.8 KB reports) spread over both broker nodes by load-generator process.

Per configuration (N = 1, 2, ... detect nodes, each on a fresh database):

1. the fleet connects; every device sends one report (first sight of each thing, not measured);
2. ``--idle-seconds`` (10) with nothing sent: each process's CPU-seconds per second (its fixed cost);
   then the offered load: ``--rate`` reports/s for ``--seconds``: p50/p99 publish -> accepted, and the
   CPU-seconds each detect node and each broker node used (bench/process_usage.py: /proc, whole
   process trees, as bench/pipeline.py measures);
   CPU-seconds per 1,000 reports (all detect nodes; and each node over its partitions' share of
   the reports), and reports per CPU-second of all detect nodes; nats-server's messages in and
   out per report (its monitoring ``/varz``);
3. with N >= 2: the same load again, and one detect node killed with SIGKILL 1 s into it: the
   takeover time (kill -> the survivors own all 64 partitions, read from their ``/metrics``), and
   what the devices saw (answered, rejected ``ServiceUnavailable``, lost).

Then the single box (``iotdefender serve`` on PostgreSQL, its default broker) under the same fleet
and load, for the ratio. Scaling efficiency = (reports per detect CPU-second with N) / (with 1).

    .venv/bin/python bench/cluster.py [--devices 3000] [--rate 1000] [--seconds 10] [--detect 1 2] [--quick]
        [--brokers 2] [--no-single-box] [--no-takeover]

Results: bench/results/cluster-<date>.json (not with --quick, which prints one line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import fleet_workload  # noqa: E402
from bench.common import bounded, environment  # noqa: E402
from bench.fleet import Fleet  # noqa: E402
from bench.process_usage import cpu_seconds, split, tree  # noqa: E402
from tests.support.jetstream import SingleJetStream  # noqa: E402
from tests.support.processes import PostgresCluster, ServiceProcess, wait_for  # noqa: E402
from tests.support import plain_http  # noqa: E402

RESULTS = Path(__file__).with_name("results")
FIRST_IDS, LOAD_IDS, TAKEOVER_IDS = 500_000_000, 1_000_000_000, 1_500_000_000
DEVICE_ARGS = ["--report-min-interval", "0", "--mqtt-acl", "own"]
PARTITIONS = 64


def tree_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))


def gauge(node: ServiceProcess, name: str) -> float:
    text = plain_http.get(node.endpoint + "/metrics", timeout=2).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Cluster:
    """Two broker nodes and ``detect`` detect nodes on one nats-server and a fresh database."""

    def __init__(self, nats_url: str, database_url: str, detect: int, brokers: int = 2) -> None:
        cluster = ["--cluster-url", nats_url, *DEVICE_ARGS]
        self.root = root = Path(tempfile.mkdtemp(prefix="iotdefender-cluster-bench-"))
        self.detect = [ServiceProcess(data_dir=root / f"detect{i}", database_url=database_url,
                                      extra_args=[*cluster, "--roles", "detect"]) for i in range(detect)]
        self.brokers = [ServiceProcess(data_dir=root / f"broker{i}", database_url=database_url,
                                       extra_args=[*cluster, "--roles", "broker,api"]) for i in range(brokers)]

    def start(self) -> None:
        for node in [*self.detect, *self.brokers]:
            node.start()  # a detect node is ready once it owns its share
        fleet_workload.configure(self.brokers[0].client())
        for broker in self.brokers:
            wait_for(lambda: listening(broker.mqtt_port), 60, "the device MQTT listener")
        wait_for(lambda: sum(gauge(n, "iotdefender_cluster_owned_partitions") for n in self.detect) == PARTITIONS,
                 30, "every partition owned")

    @property
    def ports(self) -> list[int]:
        return [broker.mqtt_port for broker in self.brokers]

    def stop(self) -> None:
        for node in [*self.brokers, *self.detect]:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)  # the nodes' data dirs and logs


def loaded(fleet: Fleet, args: argparse.Namespace, base: int, pids: dict[str, int]) -> dict[str, Any]:
    """The offered load, with the CPU-seconds each named process tree used during it."""
    before = {name: tree_cpu(pid) for name, pid in pids.items()}
    started = time.monotonic()
    load = fleet.open_loop(args.rate, args.seconds, base, args.drain_seconds)
    load["elapsed_s"] = round(time.monotonic() - started, 2)
    load["cpu_s"] = {name: round(tree_cpu(pid) - before[name], 2) for name, pid in pids.items()}
    return load


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU-seconds per second each named process tree uses while the fleet is connected and sends
    nothing (heartbeats, lease renewals, pull requests, cloud windows): the fixed cost that more
    detect nodes add, which the per-report figures include."""
    if seconds <= 0:
        return {}
    before = {name: tree_cpu(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: round((tree_cpu(pid) - before[name]) / seconds, 4) for name, pid in pids.items()}


def nats_messages(nats: SingleJetStream) -> dict[str, int]:
    """nats-server's message counters (monitoring ``/varz``): every publish, PubAck, pull request,
    delivery, ack and outcome message is one in and (when someone receives it) one out."""
    varz = plain_http.get(f"http://127.0.0.1:{nats.server.http_port}/varz", timeout=5).json()
    return {"in": int(varz["in_msgs"]), "out": int(varz["out_msgs"])}


def postmaster_pid(postgres: PostgresCluster) -> int:
    """PostgreSQL's postmaster: its process tree holds every backend the nodes use."""
    return int((postgres.datadir / "postmaster.pid").read_text().split()[0])


def measure_cluster(nats: SingleJetStream, postgres: PostgresCluster, detect: int,
                    args: argparse.Namespace) -> dict[str, Any]:
    cluster = Cluster(nats.urls[0], postgres.create_database(f"cluster{detect}"), detect, args.brokers)
    fleet = None
    try:
        cluster.start()
        fleet = Fleet("127.0.0.1", cluster.ports, args.devices, fleet_workload.report_template(),
                      per_process=args.per_process)
        connect = fleet.connect(args.connect_timeout)
        fleet.open_loop(args.rate, max(1.0, args.devices / args.rate), FIRST_IDS, args.drain_seconds)
        pids = {**{f"detect{i}": n.process.pid for i, n in enumerate(cluster.detect)},
                **{f"broker{i}": n.process.pid for i, n in enumerate(cluster.brokers)},
                "nats_server": nats.server.process.pid, "postgresql": postmaster_pid(postgres)}
        shares = [int(gauge(n, "iotdefender_cluster_owned_partitions")) for n in cluster.detect]
        idle = idle_cpu(pids, args.idle_seconds)
        messages_before = nats_messages(nats)
        load = loaded(fleet, args, LOAD_IDS, pids)
        messages = {k: v - messages_before[k] for k, v in nats_messages(nats).items()}
        detect_cpu = sum(load["cpu_s"][f"detect{i}"] for i in range(detect))
        answered = load["answered"]
        figures: dict[str, Any] = {
            "detect_nodes": detect, "broker_nodes": len(cluster.brokers), "connect": connect,
            "offered_load": load,
            "detect_cpu_s_per_1000_reports": round(1000 * detect_cpu / answered, 3) if answered else None,
            # Each node's CPU over the reports of its partitions (its share of 64).
            "detect_partitions": shares,
            # What each process uses with the fleet connected and nothing sent: a node's fixed cost.
            "idle_cpu_s_per_s": idle,
            "detect_cpu_s_per_1000_own_reports": [
                round(1000 * load["cpu_s"][f"detect{i}"] / (answered * shares[i] / PARTITIONS), 3)
                if answered and shares[i] else None for i in range(detect)],
            "broker_node_cpu_s_per_1000_reports": round(
                1000 * sum(load["cpu_s"][f"broker{i}"] for i in range(len(cluster.brokers))) / answered, 3) if answered else None,
            "reports_per_detect_cpu_s": round(answered / detect_cpu, 1) if detect_cpu else None,
            # Everything the cluster ran on (not the load generators), against the single box's figure.
            "all_cpu_s_per_1000_reports": round(1000 * sum(load["cpu_s"].values()) / answered, 3) if answered else None,
            # What nats-server handled during the load (its /varz): messages in and out per report.
            "nats_messages_per_report": {k: round(v / answered, 2) for k, v in messages.items()} if answered else None,
        }
        if detect >= 2 and not args.no_takeover:
            figures["takeover"] = takeover(cluster, fleet, args)
        return figures
    finally:
        if fleet:
            fleet.close()
        cluster.stop()


def takeover(cluster: Cluster, fleet: Fleet, args: argparse.Namespace) -> dict[str, Any]:
    """kill -9 of the last detect node 1 s into the load; until the survivors own every partition."""
    victim, survivors = cluster.detect[-1], cluster.detect[:-1]
    seen: dict[str, float | None] = {}

    def kill_and_watch() -> None:
        time.sleep(1.5)  # the load starts 0.5 s after the command
        victim_share = gauge(victim, "iotdefender_cluster_owned_partitions")
        killed = time.monotonic()
        victim.kill9()
        seen["victim_partitions"] = victim_share
        deadline = killed + 30
        while time.monotonic() < deadline:
            try:
                if sum(gauge(n, "iotdefender_cluster_owned_partitions") for n in survivors) == PARTITIONS:
                    seen["takeover_s"] = round(time.monotonic() - killed, 2)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        seen["takeover_s"] = None

    watcher = threading.Thread(target=kill_and_watch, daemon=True)
    watcher.start()
    load = fleet.open_loop(args.rate, max(args.seconds, 12.0), TAKEOVER_IDS, max(args.drain_seconds, 15.0))
    watcher.join(35)
    return {**seen, "load": {k: load[k] for k in ("offered_per_s", "seconds", "sent", "answered", "rejected",
                                                   "lost", "p50_ms", "p99_ms", "max_ms", "p99_ms_by_second")},
            "note": "rejected = answered ServiceUnavailable (no outcome within 10 s while the partition "
                    "changed owner); devices would resend"}


def measure_single_box(postgres: PostgresCluster, args: argparse.Namespace) -> dict[str, Any]:
    node = ServiceProcess(data_dir=Path(tempfile.mkdtemp(prefix="iotdefender-bench-")),
                          database_url=postgres.create_database("single"), extra_args=DEVICE_ARGS)
    fleet = None
    try:
        node.start()
        fleet_workload.configure(node.client())
        wait_for(lambda: listening(node.mqtt_port), 60, "the device MQTT listener")
        fleet = Fleet("127.0.0.1", node.mqtt_port, args.devices, fleet_workload.report_template(),
                      per_process=args.per_process)
        connect = fleet.connect(args.connect_timeout)
        fleet.open_loop(args.rate, max(1.0, args.devices / args.rate), FIRST_IDS, args.drain_seconds)
        before = {**split([node.process.pid], cpu_seconds), "postgresql": tree_cpu(postmaster_pid(postgres))}
        load = fleet.open_loop(args.rate, args.seconds, LOAD_IDS, args.drain_seconds)
        after = {**split([node.process.pid], cpu_seconds), "postgresql": tree_cpu(postmaster_pid(postgres))}
        load["cpu_s"] = {k: round(after[k] - before[k], 2) for k in after}
        return {"connect": connect, "offered_load": load,
                "cpu_s_per_1000_reports": round(1000 * sum(load["cpu_s"].values()) / load["answered"], 3)
                if load["answered"] else None}
    finally:
        if fleet:
            fleet.close()
        node.stop()
        shutil.rmtree(node.data_dir, ignore_errors=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_average = {"before": os.getloadavg()[0]}
    postgres, nats = PostgresCluster(), SingleJetStream()
    postgres.start()
    try:
        nats.start()
        configurations = []
        for count in args.detect:
            # A fresh stream too: a configuration must not start with the previous one's backlog.
            nats.stop()
            nats = SingleJetStream()
            nats.start()
            configurations.append(measure_cluster(nats, postgres, count, args))
        single = None if args.no_single_box else measure_single_box(postgres, args)
    finally:
        nats.stop()
        postgres.stop()
    load_average["after"] = os.getloadavg()[0]
    one = next((c for c in configurations if c["detect_nodes"] == 1), None)
    for c in configurations:
        base = one and one["reports_per_detect_cpu_s"]
        if single is None:
            c["scaling_efficiency"] = round(c["reports_per_detect_cpu_s"] / base, 3) \
                if base and c["reports_per_detect_cpu_s"] else None
            continue
        c["scaling_efficiency"] = round(c["reports_per_detect_cpu_s"] / base, 3) \
            if base and c["reports_per_detect_cpu_s"] else None
        single_p99 = single["offered_load"]["p99_ms"]
        c["p99_ratio_to_single_box"] = round(c["offered_load"]["p99_ms"] / single_p99, 2) \
            if single_p99 and c["offered_load"]["p99_ms"] else None
    return {"benchmark": "cluster", "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": environment(), "devices": args.devices, "rate": args.rate, "seconds": args.seconds,
            "profiles_x_behaviors": "3 x 10", "report_bytes": len(fleet_workload.report(LOAD_IDS)),
            "cluster": configurations, "single_box": single, "load_average_1min": load_average,
            "note": "Everything (nats-server, PostgreSQL, 2 broker nodes, N detect nodes, the fleet's load "
                    "generators) shares this machine's cores. cpu_s are process-tree CPU-seconds during the "
                    "offered load (a broker node's tree includes its Mosquitto child; PostgreSQL's, every "
                    "backend; the single box's cpu_s_per_1000_reports includes PostgreSQL).",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    return {"benchmark": "cluster-quick", "devices": result["devices"], "offered_per_s": result["rate"],
            "cluster": [{"detect_nodes": c["detect_nodes"], "p50_ms": c["offered_load"]["p50_ms"],
                         "p99_ms": c["offered_load"]["p99_ms"], "lost": c["offered_load"]["lost"],
                         "rejected": c["offered_load"]["rejected"],
                         "detect_cpu_s_per_1000": c["detect_cpu_s_per_1000_reports"],
                         "all_cpu_s_per_1000": c["all_cpu_s_per_1000_reports"],
                         "cpu_s": c["offered_load"]["cpu_s"],
                         "nats_messages_per_report": c["nats_messages_per_report"],
                         "scaling_efficiency": c["scaling_efficiency"],
                         "takeover_s": (c.get("takeover") or {}).get("takeover_s")}
                        for c in result["cluster"]],
            "single_box": result["single_box"] and {"p50_ms": result["single_box"]["offered_load"]["p50_ms"],
                                                    "p99_ms": result["single_box"]["offered_load"]["p99_ms"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=1000.0, help="offered reports/s, spread over all devices")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the offered load")
    parser.add_argument("--detect", type=int, nargs="+", default=[1, 2], help="detect node counts to run")
    parser.add_argument("--brokers", type=int, default=2, help="broker nodes (the fleet is spread over them)")
    parser.add_argument("--drain-seconds", type=float, default=15.0)
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--per-process", type=int, default=2000, help="connections per load-generator process")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="seconds with the fleet connected and idle, for each process's fixed cost (0: skip)")
    parser.add_argument("--no-takeover", action="store_true")
    parser.add_argument("--no-single-box", action="store_true", help="measure only the cluster")
    parser.add_argument("--max-seconds", type=int, default=600, help="the whole run is stopped after this")
    parser.add_argument("--quick", action="store_true", help="1,000 devices at 500/s, 4 s phases, no takeover")
    parser.add_argument("--output", type=Path, help="the results file (default bench/results/cluster-<date>.json)")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.rate, args.seconds, args.drain_seconds = 1000, 500.0, 4.0, 8.0
        args.no_takeover, args.max_seconds = True, 240
    bounded(args.max_seconds)
    result = run(args)
    if args.quick:
        print(json.dumps(summary(result)))
        return
    RESULTS.mkdir(exist_ok=True)
    output = args.output or RESULTS / f"cluster-{time.strftime('%Y-%m-%d', time.gmtime())}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary(result)))


if __name__ == "__main__":
    main()
