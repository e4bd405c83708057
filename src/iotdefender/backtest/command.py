"""``iotdefender backtest``: run a backtest on a running service and print what it found.

It talks to the service's signed API (``POST /_iotdefender/backtests``), so it works against a
remote server as well as a local one, uses the credentials an AWS CLI user already has, and sees
the same history, registry and profiles as the console.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, TextIO

import httpx

from iotdefender.contract.timestamps import epoch_seconds
from iotdefender.english import count_of
from iotdefender.backtest.client import ExtensionClient, ExtensionError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float) -> float:
    """Epoch seconds, ISO-8601, or an age such as ``7d``, ``12h``, ``30m`` before now."""
    if text and text[-1] in _UNITS and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * _UNITS[text[-1]]
    try:
        return epoch_seconds(text)  # the API's own reading, so the service will not refuse it later
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (epoch seconds, ISO-8601 or an age like 7d)"
                                         ) from None


def _request(args: argparse.Namespace, now: float) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if args.security_profile_name:
        spec["securityProfileName"] = args.security_profile_name
    if args.behaviors:
        document = json.loads(args.behaviors.read_text())
        spec["behaviors"] = document.get("behaviors") if isinstance(document, dict) else document
    if args.targets:
        spec["targets"] = args.targets
    spec["endTime"] = parse_time(args.end, now) if args.end else now
    spec["startTime"] = parse_time(args.start, now)
    thresholds: dict[str, list[float]] = {}
    for item in args.threshold:
        name, _, values = item.partition("=")
        thresholds[name] = [float(v) for v in values.split(",") if v]
    if thresholds:
        spec["thresholds"] = thresholds
    return spec


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def print_summary(result: dict[str, Any], out: TextIO) -> None:
    out.write(f"backtest {_when(result['startTime'])} .. {_when(result['endTime'])} UTC, "
              f"{count_of(result['devicesEvaluated'], 'device')}, {result.get('elapsedSeconds', '?')} s\n")
    for b in result["behaviors"]:
        out.write(f"\n{b['behaviorName']} ({b['method']}): {b['datapoints']} datapoints, "
                  f"{b['devicesInAlarm']} of {count_of(b['devicesEvaluated'], 'device')} would alarm, "
                  f"{count_of(b['alarms'], 'alarm')}, "
                  f"{b['cleared']} cleared, {b['invalidated']} invalidated, {b['activeAtEnd']} active at the end; "
                  + ("no alarm\n" if b["firstAlarm"] is None else f"first alarm {_when(b['firstAlarm'])} UTC\n"))
        if b.get("note"):
            out.write(f"  note: {b['note']}\n")
        for row in b["sweep"]:
            mark = "  <- current" if row["current"] else ""
            out.write(f"  threshold {json.dumps(row['threshold'])}: {count_of(row['devicesInAlarm'], 'device')}, "
                      f"{count_of(row['alarms'], 'alarm')}{mark}\n")
        for t in b["topThings"][:5]:
            out.write(f"  {t['thingName']}: {count_of(t['alarms'], 'alarm')}, first {_when(t['firstAlarm'])}\n")


def run(args: argparse.Namespace) -> int:
    try:
        client = ExtensionClient(args.endpoint_url, args.region, args.aws_profile)
        job = client.call("POST", "backtests", _request(args, time.time()))
        # Progress is for a person at a terminal; written to a file or a pipe it was a line of
        # "0.0% queued" before the result, and one more every 2 s.
        interactive = sys.stderr.isatty()
        while job["status"] in ("QUEUED", "RUNNING"):
            if interactive:
                sys.stderr.write(f"\r{job['progress'] * 100:5.1f}% {job['message'][:60]:<60}")
                sys.stderr.flush()
            time.sleep(0.5 if interactive else 2.0)
            job = client.call("GET", f"backtests/{job['backtestId']}")
        if interactive:
            sys.stderr.write("\r" + " " * 70 + "\r")
    except (httpx.TransportError, OSError) as error:  # e.g. nothing listening on the endpoint
        sys.stderr.write(f"iotdefender backtest: cannot reach the service's API at {args.endpoint_url} ({error}); "
                         "is `iotdefender serve` running there? Give its address with --endpoint-url URL\n")
        return 2
    except (ExtensionError, httpx.HTTPError) as error:
        sys.stderr.write(f"iotdefender backtest: {error}\n")
        return 2
    if job["status"] != "SUCCEEDED":
        sys.stderr.write(f"iotdefender backtest: {job['status']}: {job['message']}\n")
        return 1
    if args.json:
        print(json.dumps(job["result"], indent=2))
    else:
        print_summary(job["result"], sys.stdout)
    return 0
