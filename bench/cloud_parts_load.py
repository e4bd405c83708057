"""What a detect node reads of a partition's cloud-side window parts when it takes the partition over
(``cluster_parts.load``), at one partition's share of a large fleet.

At 10M devices one partition of 64 holds ~156,000 devices. A takeover reads the parts kept of the
seen window (the last one closed for all things: only who saw whom is needed) and of the window
open now (every part, decoded: the new owner merges them at the close). Here one broker node saw
every device in both windows; each part is a device reporting (a message sent and its reply
received, sizes, a source address).

    .venv/bin/python bench/cloud_parts_load.py [--devices 156000] [--repeats 5] [--kept rows|sets]
        [--compare-with OLD_cluster_parts.py] [--output PATH]

``--compare-with`` times another version of ``cloud/cluster_parts.py`` (e.g. ``git show
<commit>:src/iotdefender/cloud/cluster_parts.py > /tmp/old.py``) alternately with this one, on
the same rows. PostgreSQL (fsync on) in a temporary directory. Writes
bench/results/cloud-parts-load-<date>.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment  # noqa: E402
from iotdefender.cloud import cluster_parts  # noqa: E402
from iotdefender.cloud.aggregator import ClientWindow  # noqa: E402
from iotdefender.cloud.cluster_parts import Mark, StoredPart  # noqa: E402
from iotdefender.store.database import create_engine, upgrade_to_head, writing  # noqa: E402
from tests.support.processes import PostgresCluster  # noqa: E402

RESULTS = Path(__file__).with_name("results")
TOPIC = "$aws/things/t/defender/metrics/json"
SEEN_WINDOW = 1000


def part(i: int) -> ClientWindow:
    return ClientWindow(sent={TOPIC: 1}, sent_max_bytes={TOPIC: 1800}, sent_min_bytes={TOPIC: 1800},
                        received={f"{TOPIC}/accepted": 1}, source_ips={f"10.0.{i % 250}.{i % 200}": None})


def lay_down(engine, devices: int, kept: str) -> None:  # type: ignore[no-untyped-def]
    """Both windows' parts of partition 0 (a row per part, or a set per row as a detect node keeps
    them once every node reads sets), then the seen window closed for all things."""
    keep = cluster_parts.keep_sets if kept == "sets" else cluster_parts.keep
    for window in (SEEN_WINDOW, SEEN_WINDOW + 1):
        for start in range(0, devices, 20_000):
            with writing(engine) as conn:
                keep(conn, 0, [StoredPart(window, f"dev-{i:07d}", "broker-a", part(i))
                               for i in range(start, min(devices, start + 20_000))])
    with writing(engine) as conn:
        cluster_parts.advance(conn, {0: Mark(SEEN_WINDOW, None)})


def other_version(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("compared_cluster_parts", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=156_000, help="devices of the partition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare-with", type=Path, help="another cluster_parts.py, timed alternately")
    parser.add_argument("--kept", choices=["rows", "sets"], default="sets",
                        help="the parts laid down a row per part (the release before) or a set per row")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    versions: dict[str, ModuleType] = {"this": cluster_parts}
    if args.compare_with:
        versions = {"compared": other_version(args.compare_with), **versions}
    postgres = PostgresCluster()
    postgres.start()
    try:
        engine = create_engine(postgres.create_database("parts"))
        upgrade_to_head(engine)
        started = time.perf_counter()
        lay_down(engine, args.devices, args.kept)
        laid_down_s = round(time.perf_counter() - started, 2)
        seconds: dict[str, list[float]] = {name: [] for name in versions}
        for _ in range(args.repeats):
            for name, module in versions.items():
                with engine.connect() as conn:
                    started = time.perf_counter()
                    _, parts, seen, _ = module.load(conn, 0)
                    seconds[name].append(round(time.perf_counter() - started, 3))
                assert len(parts) == args.devices and seen is not None and len(seen.publishers) == args.devices
        engine.dispose()
    finally:
        postgres.stop()
    result = {"benchmark": "cloud_parts_load", "devices_of_the_partition": args.devices, "kept": args.kept,
              "kept_both_windows_s": laid_down_s,
              "load_seconds": seconds, "median": {k: statistics.median(v) for k, v in seconds.items()},
              "machine": environment(), "command": " ".join(sys.argv)}
    output = args.output or RESULTS / f"cloud-parts-load-{time.strftime('%Y-%m-%d', time.gmtime())}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("devices_of_the_partition", "kept", "kept_both_windows_s", "median")}))


if __name__ == "__main__":
    main()
