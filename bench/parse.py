"""Parse-only benchmark: our parse + validate per report, beside the bare decoder on the same bytes.

Report: the 1.8 KB report of bench/pipeline.py (bench/fleet_workload.py) (10 TCP, 5 UDP ports, 12 connections, network
stats, 3 custom metrics), as JSON with long keys, JSON with short keys and CBOR. Bare decoders:
msgspec's untyped JSON decoder (as fast as orjson, stack-measurements §8) and cbor2. Ratio =
our time / bare time (target <= 2). Results: bench/results/parse.json.

    .venv/bin/python bench/parse.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cbor2
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment  # noqa: E402
from bench.fleet_workload import report  # noqa: E402
from iotdefender.ingest.report import parse_report  # noqa: E402
from iotdefender.simulator.devices import shorten  # noqa: E402

RESULTS = Path(__file__).with_name("results")
TYPES = {"cpu": "number", "temperature": "number", "firmware": "string-list"}


def per_second(fn, seconds: float) -> float:  # type: ignore[no-untyped-def]
    count, deadline = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(200):
            fn()
        count += 200
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    document = json.loads(report(1530304554, device=7))
    cases = {
        "json_long": (json.dumps(document).encode(), "json"),
        "json_short": (json.dumps(shorten(document)).encode(), "json"),
        "cbor_long": (cbor2.dumps(document), "cbor"),
    }
    bare_json = msgspec.json.Decoder()
    results = {}
    for name, (data, encoding) in cases.items():
        parse_report(data, encoding, TYPES)  # warm up, and prove it is valid
        ours = per_second(lambda: parse_report(data, encoding, TYPES), args.seconds)
        bare = per_second((lambda: bare_json.decode(data)) if encoding == "json" else (lambda: cbor2.loads(data)),
                          args.seconds)
        results[name] = {"bytes": len(data), "parse_validate_per_s": round(ours), "bare_decode_per_s": round(bare),
                         "ratio_time_ours_over_bare": round(bare / ours, 2)}
    result = {"benchmark": "parse", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": environment(),
              "bare_decoders": {"json": "msgspec.json.Decoder() untyped", "cbor": "cbor2.loads"},
              "cases": results, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "parse.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
