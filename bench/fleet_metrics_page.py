"""The console's fleet metrics page over long ranges: time, and memory of the service process.

A fleet of ``--devices`` reporting one numeric metric every 5 minutes for ``--hours`` is laid
down as the compactor would have written it (columnar segments of 50,000 datapoints), plus the
report rows of the three devices whose latest values are the highest (the page charts them). A
service of each tree (``--trees``: this one and, say, a worktree of the code before, which read
every datapoint of the range) is started on its own copy, and the page is fetched for each range
by a logged-in client: the median time of ``--repeats`` loads after one warm-up, and the service
process's peak resident memory (VmHWM) after each range, the ranges from the shortest. A tree
whose service grows past ``--rss-limit-gib`` is stopped, and the range is reported as failed.
The trees' distributions and charts are compared for the ranges that hold the whole history:
they must be the same.

This tree's service first folds the history into each device's latest value (store/latest_values.py);
how long that took after the start is reported, and the pages are measured after it.

    .venv/bin/python bench/fleet_metrics_page.py --trees . /tmp/before [--devices 100000] [--hours 168]
        [--ranges 1h 24h 7d 14d] [--repeats 2] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import environment, report, run_in_tree, tree_revision  # noqa: E402

METRIC = "aws:num-listening-tcp-ports"
PERIOD = 300.0
CHUNK = 50_000
CHARTED = 3  # devices with report rows, and the highest latest values
RANGES = {"1h": 3600.0, "6h": 6 * 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "14d": 14 * 86400.0}  # the console's


def lay_down(data_dir: Path, devices: int, hours: int, now: float) -> dict[str, Any]:
    """Segments of every device but the charted ones, and the charted ones' report rows."""
    import numpy as np

    from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head, writing
    from iotdefender.store.history import SeriesPoints, write_segments
    from iotdefender.store.metric_values import RetainedReport, insert_reports

    engine = create_engine(sqlite_url(data_dir))
    upgrade_to_head(engine)
    names = [f"dev-{i:06d}" for i in range(devices)]
    rng = np.random.default_rng(7)
    slots = int(hours * 3600 / PERIOD)
    start = now - slots * PERIOD
    pending_index, pending_times, pending_values = [], [], []
    written = 0

    def flush(limit: int) -> None:
        nonlocal written
        index, times, values = (np.concatenate(pending_index), np.concatenate(pending_times),
                                np.concatenate(pending_values))
        pending_index.clear(), pending_times.clear(), pending_values.clear()
        segments = []
        for at in range(0, len(index), limit):  # as compaction writes it: a chunk lists its own devices
            listed, local = np.unique(index[at:at + limit], return_inverse=True)
            segments.append((METRIC, None, SeriesPoints([names[i] for i in listed.tolist()], local.astype(np.int32),
                                                        times[at:at + limit], values[at:at + limit])))
        with writing(engine) as conn:
            write_segments(conn, segments)
        written += len(index)

    others = np.arange(CHARTED, devices, dtype=np.int32)
    for slot in range(slots):
        pending_index.append(others)
        pending_times.append(start + slot * PERIOD + rng.uniform(0, PERIOD, len(others)))
        pending_values.append(rng.integers(1, 40, len(others)).astype(float))
        if sum(len(p) for p in pending_index) >= 40 * CHUNK:
            flush(CHUNK)
    if pending_index:
        flush(CHUNK)
    with writing(engine) as conn:
        insert_reports(conn, [RetainedReport(names[d], start + slot * PERIOD + 1.0, {METRIC: {"count": 100 + d + slot % 7}})
                              for d in range(CHARTED) for slot in range(slots)])
    engine.dispose()
    return {"segment_points": written, "report_rows": CHARTED * slots}


def _status(pid: int, field: str) -> int:
    """A /proc status field in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _caught_up(data_dir: Path, devices: int) -> bool:
    """Whether this tree's fold of the latest values holds all but fewer datapoints than devices."""
    import sqlalchemy as sa

    from iotdefender.store.database import create_engine, sqlite_url
    from iotdefender.store.schema import metric_latest, metric_segments

    engine = create_engine(sqlite_url(data_dir))
    try:
        with engine.connect() as conn:
            up_to = conn.execute(sa.select(metric_latest.c.up_to_segment)
                                 .where(metric_latest.c.series == METRIC)).scalar()
            if up_to is None:
                return False
            pending = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(metric_segments.c.points), 0)).where(
                metric_segments.c.series == METRIC, metric_segments.c.id > up_to)).scalar()
            return int(pending) < devices
    finally:
        engine.dispose()


def measure(tree: Path, data_dir: Path, devices: int, ranges: list[str], repeats: int, rss_limit_kib: int,
            folds: bool) -> dict[str, Any]:
    import httpx

    from tests.support.processes import ACCESS_KEY, SECRET_KEY, ServiceProcess

    svc = ServiceProcess(data_dir=data_dir, env={"IOTDEFENDER_ACCESS_KEY_ID": ACCESS_KEY,
                                                 "IOTDEFENDER_SECRET_ACCESS_KEY": SECRET_KEY,
                                                 "PYTHONPATH": str(tree.resolve() / "src")})
    started = time.perf_counter()
    svc.start()
    out: dict[str, Any] = {"ranges": {}}
    stopped = threading.Event()
    over: list[int] = []

    def watch() -> None:  # the service's memory, sampled: stopped past the limit
        while not stopped.wait(0.2):
            try:
                rss = _status(svc.process.pid, "VmRSS")
            except OSError:
                return
            if rss > rss_limit_kib:
                over.append(rss)
                svc.kill9()
                return

    try:
        if folds:
            while not _caught_up(data_dir, devices):
                time.sleep(1)
            out["latest_values_folded_after_start_s"] = round(time.perf_counter() - started, 1)
        time.sleep(5)  # the charted devices' rows compacted (every few seconds)
        client = httpx.Client(base_url=svc.endpoint, timeout=900)
        client.post("/console/login", data={"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY})
        threading.Thread(target=watch, daemon=True).start()
        for name in ranges:
            path = f"/console/metrics?metric={METRIC}&range={name}"
            times, answer = [], None
            try:
                for attempt in range(repeats + 1):
                    began = time.perf_counter()
                    answer = client.get(path)
                    if attempt:
                        times.append(time.perf_counter() - began)
                    assert answer.status_code == 200, answer.status_code
            except (httpx.HTTPError, AssertionError) as error:
                out["ranges"][name] = {"failed": f"{type(error).__name__}: {error}",
                                       "rss_at_stop_gib": round(over[0] / 2**20, 2) if over else None}
                break
            data = json.loads(re.search(r'id="metrics-data">(.*?)</script>', answer.text, re.S).group(1))
            out["ranges"][name] = {
                "median_s": round(statistics.median(times), 3),
                "peak_rss_gib": round(_status(svc.process.pid, "VmHWM") / 2**20, 2),
                "devices_shown": data["distribution"]["devices"],
                "answer": {"distribution": data["distribution"], "series": data["series"]}}
    finally:
        stopped.set()
        svc.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", type=Path, nargs="+", default=[ROOT])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--hours", type=int, default=168)
    parser.add_argument("--ranges", nargs="+", default=["1h", "24h", "7d", "14d"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rss-limit-gib", type=float, default=12.0)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        data_dir, devices, hours, now = args.worker
        print(json.dumps(lay_down(Path(data_dir), int(devices), int(hours), float(now))))
        return

    now = time.time()
    results: dict[str, Any] = {}
    for tree in args.trees:
        data_dir = Path(tempfile.mkdtemp(prefix="bench-fleet-metrics-"))
        began = time.perf_counter()
        laid = run_in_tree(tree, __file__, [str(data_dir), str(args.devices), str(args.hours), str(now)])
        laid["seconds"] = round(time.perf_counter() - began, 1)
        folds = (tree / "src/iotdefender/store/latest_values.py").exists()
        measured = measure(tree, data_dir, args.devices, args.ranges, args.repeats,
                           int(args.rss_limit_gib * 2**20), folds)
        results[str(tree)] = {"revision": tree_revision(tree), "laid_down": laid, **measured}
        print(tree, json.dumps({k: {r: {f: v for f, v in m.items() if f != "answer"} for r, m in v.items()}
                                if k == "ranges" else v for k, v in measured.items()}), file=sys.stderr, flush=True)
        for path in sorted(data_dir.rglob("*"), reverse=True):  # gigabytes: not left behind
            path.unlink() if path.is_file() else path.rmdir()
        data_dir.rmdir()
    answers = [{r: m.get("answer") for r, m in result["ranges"].items() if "answer" in m} for result in results.values()]
    # Compared where the range holds the whole history: a shorter range starts at a moment that
    # differs between the trees' runs, and cuts the history elsewhere.
    same = {r: all(a[r] == answers[0].get(r) for a in answers if r in a)  # 3 == 3.0: a count as stored or as a float
            for r in args.ranges if sum(r in a for a in answers) > 1 and RANGES[r] > args.hours * 3600 + 600}
    for result in results.values():
        for measured in result["ranges"].values():
            measured.pop("answer", None)
    report({"machine": environment(), "command": " ".join(["python", "bench/fleet_metrics_page.py", *sys.argv[1:]]),
            "load_average": list(os.getloadavg()[:2]), "devices": args.devices, "hours": args.hours,
            "same_answer_across_trees": same, "trees": results}, args.output)


if __name__ == "__main__":
    main()
