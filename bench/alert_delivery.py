"""Alert delivery out of the outbox: how fast alerts reach their webhooks, and what a slow webhook
does to the others' (docs/alerts.md).

Each tree given (``--trees``: this one, and e.g. a worktree of the code before a change) runs the
same scenarios in a fresh process, taking turns ``--repeats`` times: ``--alerts`` outbox rows in a
migrated SQLite database (the single box's default), delivered by one ``AlertDelivery`` (rate
limit off: 10^6 a second a destination) to real HTTP receivers in another process (a
``ThreadingHTTPServer`` each, answering 200), until every row is marked.

- ``one``: every alert for one webhook;
- ``four``: round-robin over four webhooks;
- ``slow``: round-robin over four webhooks, one of which answers each request after
  ``--slow-seconds``: the time until the three quick webhooks have every alert of theirs, and
  how many of the slow one's it had answered by then.

    .venv/bin/python bench/alert_delivery.py --trees . /tmp/before --alerts 2000 --repeats 3 \\
        --output bench/results/alert-delivery-$(date +%F).json
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bounded, environment, report, run_in_tree, tree_arguments, tree_revision  # noqa: E402

TOPIC = "arn:aws:sns:us-east-1:123456789012:bench-{}"


def receive(ports: list[int], slow_port: int, slow_seconds: float) -> None:
    """Serve every port until stdin closes: 200 to each POST (after ``slow_seconds`` on ``slow_port``)."""
    for port in ports:
        delay = slow_seconds if port == slow_port else 0.0

        class Handler(http.server.BaseHTTPRequestHandler):
            pause = delay

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(self.pause)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def scenario(name: str, alerts: int, slow_seconds: float) -> dict[str, Any]:
    """One scenario in this process (the tree's code on the path): its figures."""
    from iotdefender.alerts.outbox import AlertDelivery
    from iotdefender.alerts.routes import AlertRoutes
    from iotdefender.alerts.subscriptions import Webhook
    from iotdefender.service import build_api
    from iotdefender.settings import Settings
    from iotdefender.store import alert_outbox
    from iotdefender.store.database import create_engine, writing
    import sqlalchemy as sa

    destinations = 1 if name == "one" else 4
    ports = free_ports(destinations)
    slow_port = ports[0] if name == "slow" else -1
    receivers = subprocess.Popen([sys.executable, __file__, "--receive", *map(str, ports), "--slow-port",
                                  str(slow_port), "--slow-seconds", str(slow_seconds)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert receivers.stdout is not None and receivers.stdout.readline().strip() == "ready"
    urls = [f"http://127.0.0.1:{port}/alerts" for port in ports]
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            url = f"sqlite:///{Path(data_dir) / 'bench.db'}"
            build_api(Settings(data_dir=Path(data_dir), database_url=url)).context.engine.dispose()
            engine = create_engine(url)
            rows = [{"target_arn": TOPIC.format(n % destinations), "destination": f"webhook:{urls[n % destinations]}",
                     "message": json.dumps({"n": n, "violationEventType": "in-alarm", "pad": "x" * 600}),
                     "created_at": 1000.0} for n in range(alerts)]
            with writing(engine) as conn:
                alert_outbox.insert_pending(conn, rows)
            routes = AlertRoutes({TOPIC.format(i): [Webhook(u, "s")] for i, u in enumerate(urls)})
            quick = [f"webhook:{u}" for u in urls if u != f"http://127.0.0.1:{slow_port}/alerts"]

            def delivered() -> dict[str, int]:
                with engine.connect() as conn:
                    return dict(conn.execute(sa.text(
                        "SELECT destination, count(*) FROM alert_outbox WHERE status = 'delivered' "
                        "GROUP BY destination")).all())

            expected = {f"webhook:{u}": sum(1 for n in range(alerts) if n % destinations == i)
                        for i, u in enumerate(urls)}

            async def run() -> dict[str, Any]:
                node = AlertDelivery(engine, routes, "us-east-1", rate_per_destination=1e6)
                cpu, started = time.process_time(), time.perf_counter()
                task = asyncio.create_task(node.run())
                figures: dict[str, Any] = {}
                while True:
                    await asyncio.sleep(0.05)
                    done = await asyncio.to_thread(delivered)
                    if name == "slow":
                        if all(done.get(d, 0) == expected[d] for d in quick):
                            figures["quick_seconds"] = round(time.perf_counter() - started, 3)
                            figures["slow_answered_by_then"] = done.get(f"webhook:{urls[0]}", 0)
                            break
                    elif done == expected:
                        elapsed = time.perf_counter() - started
                        figures["seconds"] = round(elapsed, 3)
                        figures["alerts_per_second"] = round(alerts / elapsed, 1)
                        figures["cpu_ms_per_alert"] = round(1000 * (time.process_time() - cpu) / alerts, 3)
                        break
                    if time.perf_counter() - started > 600:
                        figures["timed_out_with"] = done
                        break
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return figures

            result = asyncio.run(run())
            engine.dispose()
            return result
    finally:
        assert receivers.stdin is not None
        receivers.stdin.close()
        receivers.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tree_arguments(parser, repeats=3)
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--slow-seconds", type=float, default=0.5)
    parser.add_argument("--scenarios", nargs="+", default=["one", "four", "slow"])
    parser.add_argument("--receive", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--slow-port", type=int, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receive:
        receive(args.receive, args.slow_port, args.slow_seconds)
        return
    if args.worker:
        name, alerts, slow_seconds = args.worker[0], int(args.worker[1]), float(args.worker[2])
        print(json.dumps(scenario(name, alerts, slow_seconds)))
        return
    bounded(3600)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {str(t): {s: [] for s in args.scenarios} for t in args.trees}
    for _ in range(args.repeats):
        for name in args.scenarios:
            for tree in args.trees:
                runs[str(tree)][name].append(run_in_tree(tree, __file__, [name, str(args.alerts),
                                                                          str(args.slow_seconds)]))
    summary = {}
    for tree, by_scenario in runs.items():
        summary[tree] = {}
        for name, figures in by_scenario.items():
            keys = sorted({k for f in figures for k in f if isinstance(f.get(k), (int, float))})
            summary[tree][name] = {k: statistics.median(f[k] for f in figures if k in f) for k in keys}
    report({"benchmark": "alert_delivery", "command": " ".join(sys.argv), "machine": environment(),
            "revisions": {str(t): tree_revision(t) for t in args.trees}, "alerts": args.alerts,
            "slow_seconds": args.slow_seconds, "median": summary, "runs": runs}, args.output)


if __name__ == "__main__":
    main()
