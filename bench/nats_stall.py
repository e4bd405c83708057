"""The stall after one NATS server of three dies, as a timeline (issue #14).

Starts PostgreSQL, three routed nats-servers (R3) and two ``iotdefender serve`` nodes with every
role, runs a small fleet of MQTT devices on both nodes (tests/support/fleet.py: one report in
flight per device, ``ServiceUnavailable`` resent), then kills one nats-server with SIGKILL and
records, in seconds after the kill:

- each node's client: disconnected / reconnected (its log), its first and last failed publish,
  fetch, consumer check, lease in doubt / confirmed / re-created;
- JetStream: each Raft group's new leader (the surviving servers' logs, "new stream leader",
  "new consumer leader"), and the first moment every stream and consumer has a leader again
  (their ``/jsz``, polled);
- the devices: when each device's first report after the kill was accepted, the longest time a
  device went without an accepted answer across the kill, and after it (until ``--observe`` ends).

``--victim connected`` kills the server most serve nodes are connected to; ``--victim other`` one
that neither node is connected to (if every server holds a node: the one with fewest).
``--freeze`` stops the victim with SIGSTOP instead (a hung server, or a path that drops packets:
no TCP reset tells the clients; it gets SIGCONT after ``--observe``). ``--lead-buckets`` first
makes the victim lead the members' and leases' buckets (as test_cluster_nats3.py does), so their
Raft groups must elect. Results: bench/results/nats-stall-*.json; docs/cluster.md, "One NATS
server of three dies: the timeline".

    PYTHONPATH=src .venv/bin/python bench/nats_stall.py --victim connected --runs 2 --out bench/results/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import bounded, environment  # noqa: E402
from tests.support.fleet import Fleet, per_device, prepare  # noqa: E402
from tests.support.jetstream import JetStreamCluster, JetStreamServer, lead_from  # noqa: E402
from tests.support.processes import PostgresCluster, ServiceProcess, wait_for  # noqa: E402
from tests.support import plain_http  # noqa: E402

#: Node log events whose first and last time after the kill the timeline shows.
NODE_EVENTS = ("cluster.nats_disconnected", "cluster.nats_reconnected", "cluster.publish_failed",
               "cluster.fetch_failed", "cluster.consumer_check_failed", "cluster.consumer_check_passed", "cluster.consumer_reset",
               "cluster.delivery_missing", "cluster.lease_in_doubt", "cluster.lease_confirmed",
               "cluster.lease_recreated", "cluster.heartbeat_failed", "cluster.step_failed",
               "cluster.renew_failed", "cluster.partition_acquired", "cluster.partition_released",
               "cluster.partition_expired", "cluster.partition_start_failed", "cluster.batch_failed")


def node_timeline(svc: ServiceProcess, killed: float) -> dict[str, Any]:
    """First/last time (s after the kill) and count of each event of ``NODE_EVENTS`` in the node's log."""
    assert svc.log_path is not None
    out: dict[str, Any] = {}
    for line in svc.log_path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        event = entry.get("event")
        if event not in NODE_EVENTS or "timestamp" not in entry:
            continue
        at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp() - killed
        if at < -0.5:
            continue
        slot = out.setdefault(event, {"first": round(at, 2), "last": round(at, 2), "count": 0})
        slot["last"] = round(at, 2)
        slot["count"] += 1
    return out


def leader_elections(server: JetStreamServer, killed: float) -> list[tuple[float, str, str]]:
    """(s after the kill, 'stream'|'consumer'|'meta', name) of each leader this server became."""
    return [(round(when - killed, 2), kind, name) for when, kind, name in server.leader_elections()
            if when >= killed - 0.5]


def leaderless(server: JetStreamServer, dead: str) -> tuple[int, int] | None:
    """(streams, consumers) whose leader is none or the ``dead`` server as this server's ``/jsz``
    sees them; None if it did not answer."""
    try:
        body = plain_http.get(f"http://127.0.0.1:{server.http_port}/jsz?streams=true&consumers=true",
                         timeout=1).json()
    except (httpx.HTTPError, ValueError):
        return None
    streams = consumers = 0
    for account in body.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            if (stream.get("cluster") or {}).get("leader", "") in ("", dead):
                streams += 1
            for consumer in stream.get("consumer_detail") or []:
                if (consumer.get("cluster") or {}).get("leader", "") in ("", dead):
                    consumers += 1
    return streams, consumers


def leaders_of(server: JetStreamServer) -> dict[str, str]:
    """{stream or stream/consumer: leader name} from one server's ``/jsz``."""
    body = plain_http.get(f"http://127.0.0.1:{server.http_port}/jsz?streams=true&consumers=true", timeout=2).json()
    out = {"_meta_": (body.get("meta_cluster") or {}).get("leader") or ""}
    for account in body.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            out[stream["name"]] = (stream.get("cluster") or {}).get("leader") or ""
            for consumer in stream.get("consumer_detail") or []:
                out[f"{stream['name']}/{consumer['name']}"] = (consumer.get("cluster") or {}).get("leader") or ""
    return out


class LeaderPoll:
    """Polls the survivors' ``/jsz`` until every stream and consumer has a leader again."""

    def __init__(self, survivors: list[JetStreamServer], dead: str, killed: float) -> None:
        self._survivors, self._dead, self._killed = survivors, dead, killed
        self.samples: list[tuple[float, int, int]] = []
        self.all_led_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            seen = leaderless(self._survivors[0], self._dead) or leaderless(self._survivors[1], self._dead)
            at = time.time() - self._killed
            if seen is not None:
                self.samples.append((round(at, 2), *seen))
                if seen == (0, 0) and at > 0.3 and self.all_led_at is None:
                    self.all_led_at = round(at, 2)
            time.sleep(0.25)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def device_timeline(fleets: list[Fleet], killed: float, ended: float) -> dict[str, Any]:
    """Per device: the first accepted answer after the kill, its longest gap between two accepted
    answers that spans the kill, and its longest time without an accepted answer between the kill
    and ``ended`` (a device answered at once, from a report in flight, and then stuck counts too)."""
    first, gaps, things, silent = {}, {}, [], {}
    for fleet in fleets:
        things += fleet.things
        times: dict[str, list[float]] = {}
        for (thing, _), outcomes in fleet.book.answers.copy().items():
            stamps = fleet.book.answered_at[(thing, _)]
            times.setdefault(thing, []).extend(t for o, t in zip(outcomes, stamps) if o == "ACCEPTED")
        for thing, stamps in times.items():
            stamps.sort()
            after = [t for t in stamps if t > killed]
            before = [t for t in stamps if t <= killed]
            marks = [killed] + [t for t in after if t < ended] + [ended]
            silent[thing] = round(max(b - a for a, b in zip(marks, marks[1:])), 2)
            if after:
                first[thing] = round(after[0] - killed, 2)
                gaps[thing] = round(after[0] - (before[-1] if before else killed), 2)
    return {"first_accepted_after_kill_s": dict(sorted(first.items())),
            "max_first_accepted_s": max(first.values()) if first else None,
            "max_gap_s": max(gaps.values()) if gaps else None,
            "longest_without_accepted_s": dict(sorted(silent.items())),
            "max_without_accepted_s": max(silent.values()) if silent else None,
            "devices_not_accepted_since_kill": sorted(set(things) - set(first))}


def one_run(args: argparse.Namespace, postgres: PostgresCluster, root: Path, run: int) -> dict[str, Any]:
    cluster = JetStreamCluster(3)
    cluster.start()
    url = postgres.create_database(f"stall{run}{time.time_ns()}")
    node_args = ["--cluster-url", ",".join(cluster.urls), "--report-min-interval", "0"]
    a = ServiceProcess(data_dir=root / f"r{run}a", database_url=url, extra_args=node_args)
    b = ServiceProcess(data_dir=root / f"r{run}b", database_url=url, extra_args=node_args)
    fleets: list[Fleet] = []
    try:
        a.start()
        b.start()
        prepare(a.client())
        fleets = [Fleet(svc.mqtt_port, [f"st{run}{name}-{n}" for n in range(args.devices)], args.interval)
                  for name, svc in (("a", a), ("b", b))]
        for fleet in fleets:
            fleet.start()
        wait_for(lambda: min(per_device(fleets).values()) >= 5, 30, "every device accepted")
        connections = {s.name: s.connections() for s in cluster.servers}
        if args.victim == "connected":
            victim = max(cluster.servers, key=lambda s: connections[s.name])
        else:
            victim = min(cluster.servers, key=lambda s: connections[s.name])
        if args.lead_buckets:
            for bucket in ("iotdefender-members", "iotdefender-leases"):
                lead_from(cluster.urls, f"KV_{bucket}", victim.name)
        time.sleep(args.settle)
        leaders = leaders_of([s for s in cluster.servers if s is not victim][0])
        led = sorted(k for k, v in leaders.items() if v == victim.name)
        survivors = [s for s in cluster.servers if s is not victim]
        if args.freeze:
            victim.process.send_signal(signal.SIGSTOP)  # hung, not dead: its connections stay open
        else:
            victim.kill9()
        killed = time.time()
        load_at_kill = [round(x, 2) for x in os.getloadavg()]
        poll = LeaderPoll(survivors, victim.name, killed)
        time.sleep(args.observe)
        poll.stop()
        ended = time.time()
        for fleet in fleets:
            fleet.pause()
        if args.freeze:
            victim.process.send_signal(signal.SIGCONT)
        result = {
            "load_average_at_kill": load_at_kill,
            "victim": victim.name, "connections_before": connections,
            "victim_led": {"streams": [k for k in led if "/" not in k],
                           "consumers": len([k for k in led if "/" in k])},
            "devices": device_timeline(fleets, killed, ended),
            "all_streams_and_consumers_led_s": poll.all_led_at,
            "leaderless_samples": poll.samples[:80:2],
            "elections": sorted(e for s in survivors for e in leader_elections(s, killed)),
            "nodes": {"a": node_timeline(a, killed), "b": node_timeline(b, killed)},
            "outcomes": dict(sum((f.book.outcomes() for f in fleets), start=__import__("collections").Counter())),
        }
        elections = result["elections"]
        result["elections_summary"] = {
            "first_s": elections[0][0] if elections else None, "last_s": elections[-1][0] if elections else None,
            "count": len(elections),
            "report_stream_s": [e[0] for e in elections if e[1] == "stream" and e[2] == "IOTDEFENDER_REPORTS"],
            "meta_s": [e[0] for e in elections if e[1] == "meta"],
            "buckets_s": [e[0] for e in elections if e[1] == "stream" and e[2].startswith("KV_")]}
        return result
    finally:
        for fleet in fleets:
            fleet.pause()
            fleet.close()
        b.stop()
        a.stop()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victim", choices=("connected", "other"), default="connected")
    parser.add_argument("--freeze", action="store_true",
                        help="SIGSTOP the victim instead of SIGKILL (a hung server or a cut path: no TCP reset)")
    parser.add_argument("--lead-buckets", action="store_true", help="make the victim lead both buckets first")
    parser.add_argument("--devices", type=int, default=10, help="per node")
    parser.add_argument("--interval", type=float, default=0.1, help="s between a device's answer and next report")
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--observe", type=float, default=25.0, help="s watched after the kill")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    bounded(int(args.runs * (args.observe + 120)))
    postgres = PostgresCluster()
    postgres.start()
    import tempfile
    root = Path(tempfile.mkdtemp(prefix="iotdefender-stall-"))
    runs = []
    try:
        for run in range(args.runs):
            result = one_run(args, postgres, root, run)
            runs.append(result)
            summary = {k: result[k] for k in ("victim", "victim_led", "all_streams_and_consumers_led_s",
                                              "elections_summary", "outcomes")}
            summary["devices"] = {k: v for k, v in result["devices"].items()
                                  if k not in ("first_accepted_after_kill_s", "longest_without_accepted_s")}
            summary["nodes"] = {n: {e: (v["first"], v["last"], v["count"]) for e, v in t.items()}
                                for n, t in result["nodes"].items()}
            print(json.dumps(summary), flush=True)
    finally:
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps({"benchmark": "nats_stall", "label": args.label, "date": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv), "args": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": environment(), "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
