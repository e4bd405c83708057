"""Synchronized bursts: every device of a fleet reports at the same instant, again and again.

Fleets report on the clock more often than evenly spread: devices started together, a cron job at
the top of the minute, an agent whose interval is aligned to the wall clock. Then the broker and
the service see nothing for most of the period and every report at once. What a steady load does
not show is measured here: how long the last answer of a burst waits (the service's work for a
burst is done in a few event-loop iterations, then its replies leave while the broker goes idle),
and whatever waits on the broker's idle pass (Mosquitto 2.0 wakes every 100 ms when nothing comes).

What runs: a real ``iotdefender serve`` (SQLite, 3 profiles x 10 behaviors: bench/fleet_workload.py)
per source tree; for each ``--sizes`` a fleet of that many devices (bench/fleet.py: one MQTT
connection each, subscribed to its replies, mutual TLS with ``--tls``) makes ``--rounds`` bursts
``--period`` seconds apart, then sends as many reports spread evenly over the same time (the steady
load of the same rate, for comparison). Report -> answer latency, p50/p90/p99/max, per phase.
``--trees`` DIR... alternate (a ``git worktree`` of the code before a change, and this one), each
service started with DIR/src first on its path; ``--repeats`` times.

``--revoke`` (with ``--tls``): at each burst's instant one more device, outside the fleet and
connected on its own (paho-mqtt), has its certificate set INACTIVE with boto3: how long after the
call returns its connection is closed, while the broker and the service are busiest.

    .venv/bin/python bench/bursts.py [--sizes 10 30 100 1000] [--period 0.5] [--rounds 40] [--tls [--revoke]]
        [--trees /tmp/before .] [--repeats 1] [--output bench/results/bursts-<date>.json]
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.certificates import make_pki, register_all  # noqa: E402
from bench.common import bounded, environment, report, tree_revision  # noqa: E402
from bench.fleet import Fleet, percentile  # noqa: E402
from bench.fleet_workload import configure, report_template  # noqa: E402
from tests.support.processes import ServiceProcess, free_port  # noqa: E402

FIGURES = ("p50_ms", "p90_ms", "p99_ms", "max_ms")


class Victim:
    """A device outside the fleet, connected with its own certificate, whose certificate is revoked."""

    def __init__(self, port: int, pki: Path, thing: str) -> None:
        self.thing, self.closed_at = thing, None
        connected = threading.Event()
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        context.load_cert_chain(str(pki / f"{thing}.pem"), str(pki / f"{thing}.key"))
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=thing, reconnect_on_failure=False)
        self.client.tls_set_context(context)
        self.client.on_connect = lambda *a: connected.set()
        self.client.on_disconnect = lambda *a: setattr(self, "closed_at", self.closed_at or time.monotonic())
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not connected.wait(10):
            raise RuntimeError(f"{thing} did not connect")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def revoke_at_bursts(iot: Any, ids: dict[str, str], victims: list[Victim], start_at: float,
                     period: float) -> list[tuple[float, float]]:
    """One victim's certificate set INACTIVE at each burst's instant: (call start, call end), CLOCK_MONOTONIC."""
    calls = []
    for round_, victim in enumerate(victims):
        time.sleep(max(0.0, start_at + round_ * period - time.monotonic()))
        began = time.monotonic()
        iot.update_certificate(certificateId=ids[victim.thing], newStatus="INACTIVE")
        calls.append((began, time.monotonic()))
    return calls


def revocation_figures(victims: list[Victim], calls: list[tuple[float, float]]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while any(v.closed_at is None for v in victims) and time.monotonic() < deadline:
        time.sleep(0.05)
    after_return = sorted((v.closed_at - end) * 1000 for v, (_, end) in zip(victims, calls) if v.closed_at)
    call_ms = sorted((end - start) * 1000 for start, end in calls)
    return {"revoked": len(calls), "disconnected": len(after_return),
            "call_p50_ms": percentile(call_ms, 0.5), "call_p99_ms": percentile(call_ms, 0.99),
            "return_to_disconnect_p50_ms": percentile(after_return, 0.5),
            "return_to_disconnect_p90_ms": percentile(after_return, 0.9),
            "return_to_disconnect_max_ms": round(after_return[-1], 1) if after_return else None}


def one_service(tree: Path, sizes: list[int], args: argparse.Namespace, pki: Path | None) -> dict[str, Any]:
    """A service of ``tree``'s code; for each size, its bursts then the steady load of the same rate."""
    tls_port = free_port()
    extra = ["--report-min-interval", "0"]  # the bursts come faster than AWS's 5 minutes
    if pki is not None:
        extra += ["--mqtt-auth", "cert", "--mqtt-tls-port", str(tls_port), "--mqtt-ca", str(pki / "ca.pem"),
                  "--mqtt-cert", str(pki / "server.pem"), "--mqtt-key", str(pki / "server.key")]
    with tempfile.TemporaryDirectory(prefix="iotdefender-bench-bursts-") as scratch:
        service = ServiceProcess(data_dir=Path(scratch) / "service", extra_args=extra)
        service.env["PYTHONPATH"] = str(tree.resolve() / "src")
        service.start()
        try:
            iot = service.client()
            configure(iot)
            ids = register_all(iot, pki, max(sizes) + _victims(sizes, args)) if pki is not None else {}
            runs = {}
            for phase, size in enumerate(sizes):
                # A thing's report ids only increase (else Duplicate): each phase above the last
                # (bench/fleet.py adds 10^8 per load-generator process).
                fleet = Fleet("127.0.0.1", tls_port if pki is not None else service.mqtt_port, size,
                              report_template(), per_process=1000, min_processes=1,
                              tls=(str(pki / "ca.pem"), str(pki)) if pki is not None else None)
                try:
                    connected = fleet.connect(timeout=300)
                    if connected["connected"] != size:
                        raise RuntimeError(f"{connected['connected']} of {size} devices connected")
                    victims = [Victim(tls_port, pki, f"dev{max(sizes) + phase * args.rounds + n}")
                               for n in range(args.rounds)] if args.revoke and pki is not None else []
                    time.sleep(1.0)
                    start_at = time.monotonic() + 0.5
                    calls: list[tuple[float, float]] = []
                    revoking = threading.Thread(target=lambda: calls.extend(
                        revoke_at_bursts(service.client(), ids, victims, start_at, args.period)))
                    revoking.start()
                    bursts = fleet.bursts(args.period, args.rounds, (2 * phase + 1) * 10**9, drain_s=20,
                                          start_at=start_at)
                    revoking.join()
                    if victims:
                        bursts["revocations"] = revocation_figures(victims, calls)
                        for victim in victims:
                            victim.close()
                    time.sleep(1.0)
                    steady = fleet.open_loop(size / args.period, args.period * args.rounds, (2 * phase + 2) * 10**9,
                                             drain_s=20)
                    runs[str(size)] = {"bursts": bursts, "steady": {k: steady[k] for k in (
                        "sent", "answered", "rejected", "lost", "p50_ms", "p99_ms", "max_ms")}}
                finally:
                    fleet.close()
            return runs
        finally:
            service.stop()


def _victims(sizes: list[int], args: argparse.Namespace) -> int:
    """Devices beyond the largest fleet, for --revoke: one a burst of each size."""
    return len(sizes) * args.rounds if args.revoke else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100, 1000])
    parser.add_argument("--period", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--tls", action="store_true", help="mutual TLS, a certificate per device")
    parser.add_argument("--revoke", action="store_true",
                        help="with --tls: a device outside the fleet revoked at each burst (UpdateCertificate)")
    parser.add_argument("--trees", type=Path, nargs="+", default=[Path(__file__).resolve().parents[1]])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.revoke and not args.tls:
        parser.error("--revoke needs --tls (devices revoked by their certificate)")
    bounded(3600)

    with tempfile.TemporaryDirectory(prefix="iotdefender-bench-bursts-pki-") as scratch:
        pki = None
        if args.tls:
            pki = Path(scratch)
            make_pki(pki, max(args.sizes) + _victims(args.sizes, args))
        runs: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            order = args.trees if repeat % 2 == 0 else list(reversed(args.trees))  # alternate who goes first
            for tree in order:
                runs.append({"tree": str(tree), "revision": tree_revision(tree), "repeat": repeat,
                             "sizes": one_service(tree, args.sizes, args, pki)})
                print(runs[-1], file=sys.stderr)

    medians: dict[str, dict[str, dict[str, float]]] = {}
    for tree in args.trees:
        mine = [run for run in runs if run["tree"] == str(tree)]
        medians[str(tree)] = {str(size): {
            phase: {figure: round(statistics.median(run["sizes"][str(size)][phase][figure] for run in mine), 1)
                    for figure in FIGURES if figure in mine[0]["sizes"][str(size)][phase]}
            for phase in ("bursts", "steady")} for size in args.sizes}
        if args.revoke:  # (--tls too: checked above)
            for size in args.sizes:
                medians[str(tree)][str(size)]["revocations"] = {
                    figure: statistics.median(run["sizes"][str(size)]["bursts"]["revocations"][figure] for run in mine)
                    for figure in ("return_to_disconnect_p50_ms", "return_to_disconnect_p90_ms",
                                   "return_to_disconnect_max_ms", "call_p50_ms")}
    report({"benchmark": "bursts", "sizes": args.sizes, "period_s": args.period, "rounds": args.rounds,
            "tls": args.tls, "repeats": args.repeats, "medians": medians, "runs": runs,
            "machine": environment(), "command": " ".join(sys.argv)}, args.output, hidden=("machine", "command", "runs"))


if __name__ == "__main__":
    main()
