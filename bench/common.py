"""What every benchmark result records about where it ran: machine, Python and package versions."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("iotdefender", "gmqtt", "msgspec", "cbor2", "SQLAlchemy", "botocore", "starlette", "uvicorn",
            "numpy", "paho-mqtt")


def environment() -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "versions": versions}


class SetClock:
    """A clock the benchmark sets (``now``), for code that takes its time as a function."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bounded(seconds: int) -> None:
    """The whole run is bounded; SIGALRM/SIGTERM unwind through the `finally`s that stop everything."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"benchmark stopped by signal {signum} (limit {seconds} s)")

    signal.signal(signal.SIGALRM, expire)
    signal.signal(signal.SIGTERM, expire)
    signal.alarm(seconds)


def report(result: dict[str, Any], output: Path | None, hidden: tuple[str, ...] = ("machine", "command")) -> None:
    """Write the whole result to ``output`` (if given) and print it without the ``hidden`` keys."""
    if output:
        output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in hidden}))


def run_in_tree(tree: Path, script: str, arguments: list[str]) -> dict[str, Any]:
    """Run ``script --worker ARGUMENTS`` in a fresh process with ``tree``'s ``src`` first on the path
    (another tree than this one: the code before a change, say); its last line of output is JSON."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=f"{tree.resolve() / 'src'}{os.pathsep}{root}")
    done = subprocess.run([sys.executable, script, "--worker", *arguments], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def tree_revision(tree: Path) -> str:
    """The tree's commit, and whether its ``src`` differs from it."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *arguments], capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted" if git("status", "--porcelain", "src") else "")


def tree_arguments(parser: argparse.ArgumentParser, repeats: int) -> None:
    """The arguments of a benchmark whose trees take turns (``run_in_tree``): the trees, the
    repeats, the output file, and the worker's own (hidden)."""
    parser.add_argument("--trees", type=Path, nargs="+", default=[Path(__file__).resolve().parents[1]])
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)


def migrated_and_owned(postgres: Any, prefix: str, token: int) -> tuple[str, Any]:
    """A fresh database of ``postgres`` (a tests.support PostgresCluster), migrated as ``serve``
    migrates it, with every partition's fence claimed with ``token`` (this process owns them all,
    as one detect node would): its URL and an engine on it."""
    import tempfile
    import time

    from iotdefender.cluster import fencing
    from iotdefender.cluster.partitions import PARTITION_COUNT
    from iotdefender.service import build_api
    from iotdefender.settings import Settings
    from iotdefender.store.database import create_engine, writing

    url = postgres.create_database(f"{prefix}{int(time.time())}")
    with tempfile.TemporaryDirectory() as data_dir:
        build_api(Settings(data_dir=Path(data_dir), database_url=url)).context.engine.dispose()  # migrations
    engine = create_engine(url)
    with writing(engine) as conn:
        for partition in range(PARTITION_COUNT):
            fencing.claim(conn, partition, token)
    return url, engine
