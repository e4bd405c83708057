"""The arguments of ``iotdefender backtest``, apart from the command (backtest/command.py).

Every command line builds the whole parser, ``serve`` included, so this module imports nothing
but argparse: the command's client (httpx, a botocore session) is imported only to run it.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", default="http://127.0.0.1:8080", help="the service's API (default %(default)s)")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--profile", dest="aws_profile", default=None, help="AWS credentials profile to sign with")
    parser.add_argument("--security-profile-name", help="backtest this profile (its behaviors and targets)")
    parser.add_argument("--behaviors", type=Path, metavar="FILE",
                        help="JSON: a list of behaviors, or an object with 'behaviors' (as for create-security-profile)")
    parser.add_argument("--target", action="append", dest="targets", metavar="ARN",
                        help="security profile target ARN (repeatable; default: the profile's, or all things)")
    parser.add_argument("--start", default="1d", help="epoch seconds, ISO-8601 or an age like 7d (default 1d)")
    parser.add_argument("--end", default=None, help="default: now")
    parser.add_argument("--threshold", action="append", default=[], metavar="BEHAVIOR=V1,V2,...",
                        help="thresholds to sweep for a behavior (default: percentiles of its values)")
    parser.add_argument("--json", action="store_true", help="print the whole result document")
