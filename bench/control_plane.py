"""Control-plane benchmark: signed API requests per second and latency (p50/p99).

Starts a real ``iotdefender serve`` (SQLite by default, or ``--database-url``), creates
``--profiles`` security profiles through the API, then drives DescribeSecurityProfile and
ListSecurityProfiles with SigV4-signed requests from ``--concurrency`` connections for
``--seconds`` each. Requests are signed ahead of time (botocore's signer, exactly what boto3
sends) so the load generator measures the server, not the client's signing; signatures stay
valid for the 5 minutes SigV4 allows. Results go to ``bench/results/control_plane-<backend>.json``.

    .venv/bin/python bench/control_plane.py [--profiles 10000] [--seconds 10] [--concurrency 16]

wrk (Debian package) replays the pre-signed requests when it is installed; otherwise an asyncio
httpx client does, which is itself CPU-bound on a small machine and understates the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment  # noqa: E402
from tests.support.processes import ACCESS_KEY, REGION, SECRET_KEY, PostgresCluster, ServiceProcess  # noqa: E402

RESULTS = Path(__file__).with_name("results")


def presign(method: str, url: str, count: int) -> list[tuple[str, str, dict[str, str]]]:
    signer = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "iot", REGION)
    out = []
    for _ in range(count):
        request = AWSRequest(method=method, url=url)
        signer.add_auth(request)
        out.append((method, url, dict(request.headers.items())))
    return out


async def drive(requests: list[tuple[str, str, dict[str, str]]], seconds: float, concurrency: int) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient, offset: int) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < deadline:
            method, url, headers = requests[i % len(requests)]
            i += concurrency
            started = time.perf_counter()
            response = await client.request(method, url, headers=headers)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client, k) for k in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


_WRK_SCRIPT = """
local requests = {%s}
local index = 0
request = function()
  index = index %% #requests + 1
  local r = requests[index]
  return wrk.format(r[1], r[2], r[3])
end
done = function(summary, latency, _)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
                 + summary.errors.status + summary.errors.timeout
  io.write(string.format('WRK {"requests": %%d, "errors": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, errors, summary.duration, latency:percentile(50), latency:percentile(99)))
end
"""


def _lua(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def drive_wrk(requests: list[tuple[str, str, dict[str, str]]], seconds: float, concurrency: int) -> dict:
    """Replay pre-signed requests with wrk (C, event-driven): the server, not the client, is measured."""
    entries = []
    for method, url, headers in requests:
        path = url.split("//", 1)[1].split("/", 1)[1]
        header_table = ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in headers.items())
        entries.append(f"{{{_lua(method)}, {_lua('/' + path)}, {{{header_table}}}}}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT % ",\n".join(entries))
    base = requests[0][1].split("/", 3)
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "-s", script.name,
                          f"{base[0]}//{base[2]}"], capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next(line for line in out.splitlines() if line.startswith("WRK "))
    figures = json.loads(line[4:])
    return {"requests": figures["requests"], "errors": figures["errors"],
            "requests_per_s": round(figures["requests"] / (figures["duration_us"] / 1e6), 1),
            "p50_ms": round(figures["p50_us"] / 1000, 2), "p99_ms": round(figures["p99_us"] / 1000, 2)}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()

    cluster = None
    url = None
    if args.backend == "postgresql":
        cluster = PostgresCluster()
        cluster.start()
        url = cluster.create_database("bench")
    service = ServiceProcess(data_dir=Path(tempfile.mkdtemp(prefix="iotdefender-bench-")), database_url=url)
    service.start()
    try:
        iot = service.client()
        behavior = {"name": "sent", "metric": "aws:num-messages-sent",
                    "criteria": {"comparisonOperator": "less-than", "value": {"count": 100}, "durationSeconds": 300}}
        began = time.perf_counter()
        for i in range(args.profiles):
            iot.create_security_profile(securityProfileName=f"profile-{i:06d}", behaviors=[behavior])
        create_s = time.perf_counter() - began

        names = [f"profile-{random.randrange(args.profiles):06d}" for _ in range(2000)]
        describe = [r for n in names for r in presign("GET", f"{service.endpoint}/security-profiles/{n}", 1)]
        listing = presign("GET", f"{service.endpoint}/security-profiles?maxResults=250", 2000)
        use_wrk = shutil.which("wrk") is not None
        run_load = drive_wrk if use_wrk else (lambda r, s_, c: asyncio.run(drive(r, s_, c)))
        results = {
            "benchmark": "control_plane",
            "load_generator": "wrk (pre-signed requests)" if use_wrk else "httpx asyncio (pre-signed requests)",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "backend": args.backend,
            "machine": environment(),
            "profiles": args.profiles,
            "concurrency": args.concurrency,
            "seconds_per_operation": args.seconds,
            "create_security_profile_per_s": round(args.profiles / create_s, 1),
            "DescribeSecurityProfile": run_load(describe, args.seconds, args.concurrency),
            "ListSecurityProfiles_maxResults_250": run_load(listing, args.seconds, args.concurrency),
            "note": "load generator, service and database share the same machine; compare runs, not absolutes",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    finally:
        service.stop()
        shutil.rmtree(service.data_dir, ignore_errors=True)
        if cluster is not None:
            cluster.stop()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"control_plane-{args.backend}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
