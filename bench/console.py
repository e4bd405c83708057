"""Console at fleet scale: every page's response time with 1k and with 100k devices, in one run.

For each fleet size the database is filled directly (SQL, in seconds): registered things in 20
thing groups, one report state per device, an hour of two numeric metrics per device as columnar
history (12 reports each), 5 % of devices with an active violation, two violation events per
device over the last week. A service is started on it, a profile attached to all things through
boto3, and each page is fetched 5 times after one warm-up by a logged-in client. Reported per page:
median and max milliseconds, and the 100k / 1k ratio of medians ("without slowing down").

    .venv/bin/python bench/console.py [--sizes 1000 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment  # noqa: E402
from iotdefender.store import schema  # noqa: E402
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head, writing  # noqa: E402
from iotdefender.store.history import SeriesPoints, write_segment  # noqa: E402
from iotdefender.store.metric_values import RetainedReport, insert_reports  # noqa: E402
from tests.support.processes import ACCESS_KEY, SECRET_KEY, ServiceProcess  # noqa: E402

RESULTS = Path(__file__).with_name("results")
ARN = "arn:aws:iot:us-east-1:123456789012:"
PORTS = "aws:num-listening-tcp-ports"
BYTES = "aws:all-bytes-out"
BEHAVIOR = {"name": "ports", "metric": PORTS, "criteria": {"comparisonOperator": "less-than-equals",
                                                           "value": {"count": 3}}}
GROUPS = 20


def fill(data_dir: Path, devices: int, now: float) -> None:
    engine = create_engine(sqlite_url(data_dir))
    upgrade_to_head(engine)
    names = [f"dev-{i:06d}" for i in range(devices)]
    rng = np.random.default_rng(3)
    with writing(engine) as conn:
        conn.execute(schema.thing_groups.insert(), [
            {"name": f"group-{g}", "group_id": uuid.uuid4().hex, "arn": f"{ARN}thinggroup/group-{g}",
             "parent_name": None, "description": None, "attributes": {}, "version": 1, "creation_date": now}
            for g in range(GROUPS)])
        conn.execute(schema.things.insert(), [
            {"name": n, "thing_id": uuid.uuid4().hex, "arn": f"{ARN}thing/{n}", "thing_type_name": None,
             "attributes": {}, "version": 1, "creation_date": now} for n in names])
        conn.execute(schema.thing_group_members.insert(), [
            {"group_name": f"group-{i % GROUPS}", "thing_name": n} for i, n in enumerate(names)])
        conn.execute(schema.thing_report_state.insert(), [
            {"thing_name": n, "last_report_id": 12, "last_report_at": now - rng.uniform(0, 300)} for n in names])
        behavior = dict(BEHAVIOR)
        violators = names[:: 20]
        conn.execute(schema.active_violations.insert(), [
            {"violation_id": uuid.uuid4().hex, "thing_name": n, "profile_name": "fleet", "behavior_name": "ports",
             "behavior": behavior, "criteria_type": "STATIC", "suppressed": False,
             "last_violation_value": {"count": 5}, "last_violation_time": now - 60,
             "violation_start_time": now - 3600} for n in violators])
        events = []
        for i, n in enumerate(names):
            at = now - rng.uniform(0, 7 * 86400)
            vid = uuid.uuid4().hex
            for kind, t in (("in-alarm", at), ("alarm-cleared", at + 600)):
                events.append({"violation_id": vid, "event_type": kind, "thing_name": n, "profile_name": "fleet",
                               "behavior": behavior, "behavior_name": "ports", "criteria_type": "STATIC",
                               "suppressed": False, "metric_value": {"count": 5 if kind == "in-alarm" else 3},
                               "event_time": t, "evidence": {"threshold": {"count": 3}}})
        conn.execute(schema.violation_events.insert(), events)
        index = np.tile(np.arange(devices, dtype=np.int32), 12)
        times = now - 3600 + np.repeat(np.arange(12) * 300.0, devices) + rng.uniform(0, 300, devices)[index]
        write_segment(conn, PORTS, SeriesPoints(names, index, times, rng.integers(2, 6, len(index)).astype(float)))
        write_segment(conn, BYTES, SeriesPoints(names, index, times, rng.lognormal(10, 0.4, len(index))))
        # The device page reads one device's report rows: give the device it shows an hour of them.
        insert_reports(conn, [RetainedReport(names[1], now - 3600 + k * 300, {PORTS: {"count": 3}, BYTES: {
            "count": 40000 + k}}) for k in range(12)])
    engine.dispose()


def pages(devices: int) -> dict[str, str]:
    one = f"dev-{1:06d}"
    return {
        "overview": "/console/",
        "fleet metrics (whole fleet)": f"/console/metrics?metric={PORTS}&range=1h",
        "fleet metrics (one group)": f"/console/metrics?metric={BYTES}&group=group-3&range=1h",
        "devices": "/console/things",
        "devices (prefix, 2nd page)": f"/console/things?prefix=dev-0&after=dev-{devices // 2:06d}",
        "device": f"/console/things/{one}?range=1h",
        "profiles": "/console/profiles",
        "violations (active)": "/console/violations",
        "violations (active, behavior filter)": "/console/violations?behavior=ports&verification=UNKNOWN",
        "violations (history, 7d)": "/console/violations?view=history&range=7d",
        "violations (history, device)": f"/console/violations?view=history&thing={one}&range=7d",
        "backtest form": "/console/backtest?profile=fleet",
    }


def measure(devices: int, repeat: int) -> dict[str, dict[str, float]]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-console-{devices}-"))
    now = time.time()
    began = time.perf_counter()
    fill(data_dir, devices, now)
    filled_s = time.perf_counter() - began
    svc = ServiceProcess(data_dir=data_dir)
    svc.start()
    try:
        iot = svc.client()
        iot.create_security_profile(securityProfileName="fleet", behaviors=[BEHAVIOR])
        iot.attach_security_profile(securityProfileName="fleet", securityProfileTargetArn=f"{ARN}all/things")
        client = httpx.Client(base_url=svc.endpoint, timeout=120)
        client.post("/console/login", data={"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY})
        out: dict[str, dict[str, float]] = {"_fill_seconds": {"value": round(filled_s, 1)}}
        for name, path in pages(devices).items():
            client.get(path)  # warm-up
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                answer = client.get(path)
                times.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200, (path, answer.status_code)
            out[name] = {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}
        return out
    finally:
        svc.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results = {size: measure(size, args.repeat) for size in args.sizes}
    small, large = min(args.sizes), max(args.sizes)
    ratios = {page: round(results[large][page]["median_ms"] / max(results[small][page]["median_ms"], 0.1), 2)
              for page in pages(large)}
    output = {"benchmark": "console", "command": " ".join(["python", "bench/console.py", *sys.argv[1:]]),
              "environment": environment(), "pages": {str(k): v for k, v in results.items()},
              f"median_ratio_{large}_vs_{small}": ratios}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "console.json").write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps({k: v for k, v in output.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
