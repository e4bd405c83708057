"""Live backtest preview benchmark: a week of a 10k-device fleet, re-counted as a threshold changes.

The console's behavior builder asks ``POST /console/api/builder/preview`` after each edit; the
server answers with ``backtest.preview.BacktestPreview``. The history is the one bench/backtest.py
lays down (one columnar segment per series and hour, one report per device every 300 s: 20.2M
datapoints per metric), for the same two behaviors (a port count; bytes out summed over 600 s).

Measured: the first preview of a range (reads and prepares both series: what choosing a profile or
a range costs), then a threshold change of each behavior, several times (what the operator waits
for while editing: target, an answer within 1 s) — in process, then through a service on the same
database, over HTTP with a console session, timed from the client. Checked: every previewed count equals the full
``run_backtest`` for the same thresholds.

    .venv/bin/python bench/backtest_preview.py [--devices 10000] [--days 7] [--changes 10]
"""

from __future__ import annotations

import copy
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.backtest import BEHAVIORS, START, empty_history, fleet_arguments, lay_down  # noqa: E402
from bench.common import environment  # noqa: E402
from iotdefender.backtest.preview import BacktestPreview  # noqa: E402
from iotdefender.backtest.runner import BacktestRequest, run_backtest  # noqa: E402
from tests.support.processes import ACCESS_KEY, SECRET_KEY, ServiceProcess  # noqa: E402

RESULTS = Path(__file__).with_name("results")
# Thresholds an operator might try in turn, per behavior (bytes-out: around the fleet's 600 s sums);
# none is the starting one or repeats, so every change is counted afresh (none answers from memory).
TRIES = {"ports": [4, 2, 5, 1, 6], "bytes-out": [300_000, 200_000, 150_000, 120_000, 500_000]}


def with_threshold(behaviors: list[dict], name: str, value: int) -> list[dict]:
    out = copy.deepcopy(behaviors)
    for b in out:
        if b["name"] == name:
            b["criteria"]["value"] = {"count": value}
    return out


def through_http(data_dir: Path, start: float, end: float, changes: int) -> dict:
    """The same edits as the builder sends them: a service on the same database, a logged-in
    console session, ``POST /console/api/builder/preview`` timed from the client."""
    svc = ServiceProcess(data_dir=data_dir)
    svc.start()
    try:
        client = httpx.Client(base_url=svc.endpoint, timeout=600)
        client.post("/console/login", data={"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY})
        token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/console/").text).group(1)

        def ask(behaviors: list[dict]) -> float:
            began = time.perf_counter()
            answer = client.post("/console/api/builder/preview", headers={"x-csrf-token": token},
                                 json={"behaviors": behaviors, "startTime": start, "endTime": end})
            assert answer.status_code == 200, answer.text
            return time.perf_counter() - began

        behaviors = copy.deepcopy(BEHAVIORS)
        first = ask(behaviors)
        times = []
        for i in range(changes):
            name = BEHAVIORS[i % len(BEHAVIORS)]["name"]
            behaviors = with_threshold(behaviors, name, TRIES[name][(i // len(BEHAVIORS)) % len(TRIES[name])])
            times.append(ask(behaviors))
        return {"firstPreviewSeconds": round(first, 3), "thresholdChange": {
            "count": len(times), "medianSeconds": round(statistics.median(times), 3),
            "maxSeconds": round(max(times), 3)}, "met": max(times) < 1.0}
    finally:
        svc.stop()


def main() -> None:
    args = fleet_arguments("--changes", 10)
    data_dir, engine = empty_history("bench-preview-")
    start = START
    end = start + args.days * 86400.0
    began = time.perf_counter()
    points, _ = lay_down(engine, args.devices, args.days, start, np.empty(0, dtype=np.int64))
    laid_down_s = time.perf_counter() - began

    preview = BacktestPreview(engine)
    behaviors = copy.deepcopy(BEHAVIORS)
    began = time.perf_counter()
    preview.preview(BacktestRequest(behaviors, start, end, covers=lambda thing: True))
    first_s = time.perf_counter() - began

    changes = []
    for i in range(args.changes):
        name = BEHAVIORS[i % len(BEHAVIORS)]["name"]
        value = TRIES[name][(i // len(BEHAVIORS)) % len(TRIES[name])]
        behaviors = with_threshold(behaviors, name, value)
        request = BacktestRequest(behaviors, start, end, covers=lambda thing: True)
        began = time.perf_counter()
        answer = preview.preview(request)
        seconds = time.perf_counter() - began
        changes.append({"behavior": name, "threshold": value, "seconds": round(seconds, 3),
                        "allCached": all(b["cached"] for b in answer["behaviors"]),
                        "devicesInAlarm": {b["behaviorName"]: b["devicesInAlarm"] for b in answer["behaviors"]},
                        "request": request, "answer": answer})

    http = through_http(data_dir, start, end, args.changes)

    # The last answer against a full backtest of the same behaviors.
    last = changes[-1]
    full = {b["behaviorName"]: b for b in run_backtest(engine, last["request"])["behaviors"]}
    agrees = all((b["devicesInAlarm"], b["alarms"]) == (full[b["behaviorName"]]["devicesInAlarm"],
                                                        full[b["behaviorName"]]["alarms"])
                 for b in last["answer"]["behaviors"])
    times = [c["seconds"] for c in changes]
    output = {
        "benchmark": "backtest_preview",
        "command": " ".join(["python", "bench/backtest_preview.py", *sys.argv[1:]]),
        "environment": environment(),
        "devices": args.devices,
        "days": args.days,
        "datapointsPerMetric": points,
        "history": {"laidDownSeconds": round(laid_down_s, 2)},
        "firstPreviewSeconds": round(first_s, 3),
        "loadAverageAtEnd": [round(x, 2) for x in os.getloadavg()],  # the machine is shared: how busy it was
        "thresholdChange": {"count": len(times), "medianSeconds": round(statistics.median(times), 3),
                            "maxSeconds": round(max(times), 3)},
        "target": {"seconds": 1.0, "met": max(times) < 1.0},
        "agreesWithFullBacktest": agrees,
        "throughHttp": http,
        "changes": [{k: v for k, v in c.items() if k not in ("request", "answer")} for c in changes],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backtest_preview.json").write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps(output, indent=2))


if __name__ == "__main__":
    main()
