"""What leaving the windows a device spent away out of ML Detect's training costs.

``store/history.py`` ``without_windows_away`` drops the datapoints of a cloud-side series at the
(device, window end) pairs marked ``iotdefender/away``; the trainer runs it on the whole trailing
period once per refresh. Measured on a fleet of ``--devices`` devices x ``--days`` days of 5-minute
windows, with three shares of the fleet away half the time (one device, a tenth, all), each
checked against the pairs it must leave out. One process, wall and CPU seconds, best of
``--repeats``:

    .venv/bin/python bench/ml_away_windows.py [--devices 10000] [--days 14] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment, report  # noqa: E402
from iotdefender.store.history import SeriesPoints, without_windows_away  # noqa: E402

RESULTS = Path(__file__).with_name("results")
WINDOW_S = 300.0
START = 1_800_000_000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    windows = int(args.days * 86_400 / WINDOW_S)
    things = [f"device-{i}" for i in range(args.devices)]
    device = np.repeat(np.arange(args.devices, dtype=np.int32), windows)
    window = np.tile(np.arange(windows), args.devices)
    points = SeriesPoints(things, device, START + WINDOW_S * window, np.ones(len(device)))
    cases = []
    for name, devices_away in (("one device", 1), ("a tenth", max(1, args.devices // 10)), ("all", args.devices)):
        marked = (device < devices_away) & (window % 2 == 0)
        away = SeriesPoints(things[:devices_away], device[marked], points.times[marked], np.ones(int(marked.sum())))
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            kept = without_windows_away(points, away)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        if len(kept) != len(points) - int(marked.sum()) or not np.array_equal(kept.times, points.times[~marked]):
            raise SystemExit(f"{name}: the wrong datapoints were left out")
        cases.append({"away": name, "devices_away": devices_away, "marks": int(marked.sum()),
                      "datapoints": len(points), "kept": len(kept), "wall_s": round(min(walls), 2),
                      "cpu_s": round(min(cpus), 2)})
    today = datetime.date.today().isoformat()
    output = args.output or RESULTS / f"ml-away-windows-{args.devices}x{args.days:g}d-{today}.json"
    report({"benchmark": "ml_away_windows", "date": today, "cases": cases, "machine": environment(),
            "command": " ".join(sys.argv)}, output)


if __name__ == "__main__":
    main()
