"""Throwaway real services for the tests: a PostgreSQL cluster and a live ``iotdefender serve``.

Each instance listens on a free loopback port and keeps its files in a temporary directory, so
the suite runs the same on a fresh machine, in CI, and next to another run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
from botocore.config import Config

from tests.support import plain_http

ACCESS_KEY = "AKIDIOTDEFENDERTEST1"
SECRET_KEY = "test-secret-key-0123456789abcdefghijklmn"
REGION = "us-east-1"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range when it can: the kernel's own choice
    (``bind(0)``) is in that range, where every outgoing connection takes its local port too, so
    a service started (or restarted) on it later could find it taken by some client's socket (a
    full run beside a trial of thousands of MQTT devices had four services refused "port already
    in use")."""
    low, _ = _ephemeral_range()
    for _ in range(50):
        port = random.randint(10_000, max(10_001, low - 1))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_children(pid: int) -> list[int]:
    """The Mosquitto processes whose parent is ``pid`` (the service's broker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status and status.startswith("Name:\tmosquitto\n"):
                found.append(int(entry.name))
    return found


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def wait_until(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it holds or ``timeout`` passes; its last answer (for an assert)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class PostgresCluster:
    """``initdb`` + ``pg_ctl`` as the ``postgres`` system user (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("PostgreSQL server binaries not found; `make test` installs them with apt-get")
        self.bin = Path(bins[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="iotdefender-pg-"))
        self.port = free_port()
        self.datadir = self.root / "data"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str) -> None:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--"] + command
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                  "--locale=C", "--encoding=UTF8")
        self.resume()

    def resume(self) -> None:
        """Start the server on the existing data directory (after ``start`` or ``halt``)."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.datadir), "-o", options, "-l",
                  str(self.root / "log"), "-w", "start")

    def halt(self) -> None:
        """An outage: stop the server at once (``-m immediate``, like a crash), keeping its data."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop")

    def freeze(self) -> None:
        """A server that stops answering without closing anything (its processes stopped, as a hung
        disk would): SIGSTOP to the postmaster and every backend; the kernel still acknowledges."""
        os.kill(self._postmaster(), signal.SIGSTOP)  # first: it forks no backend while stopped
        for pid in self._children():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in [*self._children(), self._postmaster()]:
            os.kill(pid, signal.SIGCONT)

    def _postmaster(self) -> int:
        return int((self.datadir / "postmaster.pid").read_text().split()[0])

    def _children(self) -> list[int]:
        found = subprocess.run(["pgrep", "-P", str(self._postmaster())], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self, remove_later: bool = False) -> None:
        """Stop the server and delete its files: at once, or (``remove_later``) by a detached ``rm``
        that the caller does not wait for."""
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "stop")
        finally:
            if remove_later:
                remove_in_background(self.root)
            else:
                shutil.rmtree(self.root, ignore_errors=True)


def remove_in_background(path: Path) -> None:
    """Delete ``path`` in a detached ``rm -rf`` that outlives the caller.

    For the suite's shared PostgreSQL at the end of a run: by then it holds ~80 databases and their
    WAL (1.1 GB, 35,000 files), and deleting them took 6.7 s on this machine's disk (ext4 mounted
    with online ``discard``), twice at once with two pytest workers: most of the 11-20 s each
    worker spent in its last teardown. Nothing waits for those files to go, so the run need not."""
    subprocess.Popen(["rm", "-rf", "--", str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)


def start_together(*services: ServiceProcess) -> None:
    """Start every service at once and return when all are healthy, as an operator's nodes start
    (cluster mode creates its streams and migrates its database safely from any number of nodes at
    once: docs/cluster.md). Each waits for its own start, so one after another cost the sum."""
    with ThreadPoolExecutor(len(services)) as pool:
        list(pool.map(ServiceProcess.start, services))


@contextlib.contextmanager
def running(svc: ServiceProcess) -> Iterator[ServiceProcess]:
    """Start, hand out, stop, and remove the service's data directory (each run left one in /tmp)."""
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()
        shutil.rmtree(svc.data_dir, ignore_errors=True)


# What every iotdefender process the tests start loads first (its docstring says why).
SERVICE_SITE = Path(__file__).resolve().parent / "service_site"


def service_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` for an ``iotdefender`` process: its ``PYTHONPATH`` (a tree under test first, if it
    names one) then ``SERVICE_SITE``, so the process runs with what ``make run`` installs."""
    paths = [path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path and path != str(SERVICE_SITE)]
    return {**env, "PYTHONPATH": os.pathsep.join([*paths, str(SERVICE_SITE)])}


class _PortTaken(RuntimeError):
    """The service exited because a port it was given was in use."""


@dataclass
class ServiceProcess:
    """A live ``iotdefender serve`` in a subprocess, reached only over HTTP like a user would."""

    data_dir: Path
    database_url: str | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(
        default_factory=lambda: {"IOTDEFENDER_ACCESS_KEY_ID": ACCESS_KEY, "IOTDEFENDER_SECRET_ACCESS_KEY": SECRET_KEY})
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Start and wait until healthy. Ports of free_port() are free when chosen, not when bound: on a
        first start whose port was taken meanwhile (another test's process chose it too: seen once in a
        full run), new ports are chosen. A restart keeps its ports, as its clients expect."""
        first_start = self.process is None
        for attempt in range(3):
            try:
                self._start_once()
                return
            except _PortTaken:
                if not first_start or attempt == 2:
                    raise
                self.port, self.mqtt_port = free_port(), free_port()

    def _start_once(self) -> None:
        args = [sys.executable, "-m", "iotdefender", "serve", "--host", self.host, "--api-port", str(self.port),
                "--mqtt-port", str(self.mqtt_port), "--data-dir", str(self.data_dir), *self.extra_args]
        if self.database_url:
            args += ["--database-url", self.database_url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDEFENDER_")}
        env = service_environment({**env, **self.env})
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "service.log"
        log = open(self.log_path, "ab")
        log_start = self.log_path.stat().st_size  # this start's lines come after it
        self.process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def healthy() -> bool:
            if self.process.poll() is not None:
                this_start = self.log_path.read_bytes()[log_start:].decode(errors="replace")
                taken = "already in use" in this_start
                raise (_PortTaken if taken else RuntimeError)(f"iotdefender serve exited: {this_start[-3000:]}")
            try:
                return plain_http.get(self.endpoint + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(healthy, 60, "iotdefender serve")
        except TimeoutError:
            # Not left running: the fixture that started it never reaches its own stop, and on a
            # loaded machine each such process (its Mosquitto, its database connections) slowed the
            # next starts until they timed out too (one CI run left eleven behind).
            self.stop()
            raise

    def healthz(self, timeout: float = 10) -> int:
        """The status of ``GET /healthz`` (0: no answer)."""
        try:
            return plain_http.get(self.endpoint + "/healthz", timeout=timeout).status_code
        except httpx.HTTPError:
            return 0

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def restart(self, hard: bool = False) -> None:
        self.kill9() if hard else self.stop()
        self.start()

    def client(self, service: str = "iot", **overrides: str):  # type: ignore[no-untyped-def]
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=overrides.get("key", ACCESS_KEY),
            aws_secret_access_key=overrides.get("secret", SECRET_KEY),
            aws_session_token=overrides.get("token"),
            config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        )


class Mosquitto:
    """A real Mosquitto broker (Debian's package) on a free loopback port, anonymous clients allowed.

    ``acl`` is the text of an ACL file (``pattern`` and ``user`` lines), for tests and benchmarks
    that confine devices to their own topics; ``settings`` are more mosquitto.conf lines.
    """

    def __init__(self, acl: str | None = None, settings: str = "") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="iotdefender-mosquitto-"))
        self.port = free_port()
        self.acl = acl
        self.settings = settings
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        config = self.root / "mosquitto.conf"
        text = (f"listener {self.port} 127.0.0.1\nset_tcp_nodelay true\nallow_anonymous true\npersistence false\n"
                "max_queued_messages 100000\n" + self.settings)
        if self.acl is not None:
            (self.root / "acl").write_text(self.acl)
            self.root.chmod(0o755)  # started as root, Mosquitto reads the ACL file as user mosquitto
            text += f"acl_file {self.root / 'acl'}\n"
        config.write_text(text)
        log = open(self.root / "mosquitto.log", "ab")
        self.process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def listening() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError((self.root / "mosquitto.log").read_text())
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, 15, "mosquitto")

    def restart(self) -> None:
        """Stop and start again on the same port with the same configuration."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


class MotoServer:
    """moto's standalone server: an SNS-compatible endpoint (with SQS) for alert delivery tests."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = str(Path(sys.executable).with_name("moto_server"))
        self.process = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            try:
                return plain_http.get(self.endpoint + "/moto-api/", timeout=1).status_code < 500
            except httpx.HTTPError:
                return False

        wait_for(up, 30, "moto_server")

    def client(self, service: str):  # type: ignore[no-untyped-def]
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class NatsServer:
    """A real NATS server (Debian's package) with JetStream, its MQTT listener and a system account."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="iotdefender-nats-"))
        self.port, self.http_port, self.mqtt_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        config = self.root / "nats.conf"
        config.write_text(
            f"port: {self.port}\nhttp: {self.http_port}\nserver_name: test\n"
            f'jetstream {{ store_dir: "{self.root / "js"}" }}\n'
            "accounts {\n  SYS: { users: [ {user: sys, password: sys} ] }\n"
            "  APP: { jetstream: enabled, users: [ {user: dev, password: dev} ] }\n}\n"
            f"system_account: SYS\nmqtt {{ port: {self.mqtt_port} }}\n")
        log = open(self.root / "nats.log", "wb")
        self.process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def listening() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError((self.root / "nats.log").read_text())
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.mqtt_port)) == 0

        wait_for(listening, 20, "nats-server")

    def restart(self) -> None:
        """Stopped and started again on its ports (an upgrade): every connection ends without a
        DISCONNECT event, and the new ones are numbered from 1 again, under a new server id."""
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)
        self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
