"""``MosquittoBroker``: the broker the service runs (same interface as ``ExternalBroker``).

Mosquitto runs as a supervised child of the service, configured by config.py and governed by
defender_plugin.c (identity, ACL, refusals, broker events). The service is one more MQTT client of
it (``ExternalBroker``, gmqtt), logged in with a random secret made at each start: it receives the
reports and the plugin's event batches on topics only it can read, sends the replies as batches the
plugin publishes (frames.py), and sends control commands (disconnect, refuse, allow a device) on a
topic only it can write.

Why a child process and not a system service: ``make run`` and the tests need a broker with this
plugin and these listeners and nothing else; the child dies with the service (PR_SET_PDEATHSIG) and
is restarted if it dies alone. Devices' persistent sessions outlive both (config.Persistence): saved
in the runtime directory when Mosquitto stops, and every autosave period.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import resource
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Set as AbstractSet
from pathlib import Path
from types import MappingProxyType
from typing import IO

import anyio.to_thread
import structlog

from iotdefender.brokers.external import BrokerUrl, ExternalBroker
from iotdefender.brokers.gatekeeper import Gatekeeper
from iotdefender.brokers.listeners import ListenerSettings, ReportSink
from iotdefender.brokers.mosquitto.build import BrokerUnavailable, default_cache_dir, mosquitto_executable, plugin_library
from iotdefender.brokers.mosquitto import config as mosquitto_config
from iotdefender.brokers.mosquitto.config import Persistence, PluginOptions, render_config
from iotdefender.brokers.mosquitto.connections import ConnectedClients
from iotdefender.brokers.mosquitto.events import apply_events
from iotdefender.brokers.mosquitto.frames import (
    MAX_REPLIES_BYTES,
    ReplyBatcher,
    decode_reports,
    encode_taken,
    report_batch_head,
)
from iotdefender.brokers.mosquitto.handover import Handover
from iotdefender.child_process import die_with_parent
from iotdefender.log_limits import LimitedLog
from iotdefender.net_address import check_port_free

log = structlog.get_logger("iotdefender.broker.mosquitto")

MOSQUITTO_LINES_BURST = 20  # Mosquitto's lines of one kind relayed per 10 s (LimitedLog)


def _line_kind(line: str) -> str:
    """What a flood of Mosquitto's lines has in common: their first word, digits as '#'
    ("Warning:", "OpenSSL", "Protocol", "Client"). Anything longer may hold a client id, which
    anyone can vary: "Protocol error from <client id>: ..." comes before authentication, and
    grouped by its first 40 characters every connection made a kind of its own (53,000 lines in
    10 s, an outside-in test)."""
    head = line.split(maxsplit=1)[0][:40]  # the relay passes only lines with something in them
    return "".join("#" if c.isdigit() else c for c in head)

EVENTS_TOPIC = "$iotdefender/events"
CONTROL_TOPIC = "$iotdefender/control"
#: Bytes of certificate targets in one command: with the verb and the frame's head, within what one
#: message of the service's carries (frames.MAX_REPLIES_BYTES, under the broker's packet limit).
CONTROL_BATCH_BYTES = MAX_REPLIES_BYTES - 64
REPORTS_TOPIC = "$iotdefender/reports"
REPLIES_TOPIC = "$iotdefender/replies"
_READY_TIMEOUT_S = 15.0
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
#: The service's own connection asks for no MQTT keep alive. Mosquitto drops a client silent for
#: 1.5 keep-alive periods, and a service stalled that long (a long GC pause, a frozen VM, SIGSTOP)
#: lost its connection: when it resumed, the replies of the reports it had read before the stall
#: went to the dead socket, unanswered and counted nowhere (an outside-in test: 88 reports stored,
#: never answered, after 50 s stopped with a keep alive of 30 s). Nothing is gained by the drop:
#: a service that dies closes its socket (the kernel does it, and Mosquitto dies with it), and
#: while it is stalled the plugin holds what it cannot send and answers ServiceOverloaded past its
#: bound (config.REPORTS_HELD_BYTES), as it would with the connection up.
SERVICE_KEEPALIVE_S = 0


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (inherited by Mosquitto: one file per device);
    returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class MosquittoBroker:
    """Start/stop Mosquitto with the plugin, publish replies, disconnect or refuse a device."""

    def __init__(self, listeners: ListenerSettings, gatekeeper: Gatekeeper, sink: ReportSink,
                 password_file: Path | None = None, cache_dir: Path | None = None,
                 runtime_dir: Path | None = None, connections: ConnectedClients | None = None,
                 acl_file: Path | None = None, session_expiry_s: float = 3600.0, autosave_s: float = 60.0,
                 registered_certificates_only: bool = False) -> None:
        """``acl_file`` (Mosquitto's syntax) governs devices' application topics; read by Mosquitto at
        its start. ``runtime_dir`` holds mosquitto.conf (with the service's secret, so mode 0700): the data
        directory's ``mosquitto/`` for the service, rewritten at each start, so that a killed
        service leaves nothing behind in /tmp; a temporary directory when not given. It also holds
        mosquitto.db, the persistent sessions (kept for ``session_expiry_s`` after their device left,
        saved every ``autosave_s`` and at each stop), which the next start on that directory restores.
        ``registered_certificates_only``: a certificate connects only once ``accept_certificates``
        named it (registered ACTIVE), as on AWS IoT; else any the CA signed, unless denied."""
        self._listeners = listeners
        self._gatekeeper = gatekeeper
        self._sink = sink
        self.connections = connections if connections is not None else ConnectedClients()
        self._handover = Handover()  # what the plugin sent that never arrived (handover.py)
        # Absolute: Mosquitto runs in the runtime directory, where a relative path (the default
        # --data-dir is ./data) would name something else.
        self._password_file = password_file.resolve() if password_file is not None else None
        self._acl_file = acl_file.resolve() if acl_file is not None else None
        self._cache_dir = (cache_dir or default_cache_dir()).resolve()
        self.client_id = f"iotdefender-{secrets.token_hex(6)}"
        self._secret = secrets.token_urlsafe(32)
        self._refused: set[str] = set()
        self._denied_certificates: dict[str, str] = {}  # certificate id -> its common name
        self.registered_certificates_only = registered_certificates_only
        self._accepted_certificates: set[str] = set()  # registered ACTIVE (registered_certificates_only)
        # certificate id -> (its common name, the things it is attached to): those attached to any
        self._certificate_things: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._runtime: Path | None = runtime_dir.resolve() if runtime_dir is not None else None
        self._temporary_runtime = runtime_dir is None
        self._client: ExternalBroker | None = None
        self._replies: ReplyBatcher | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._output: collections.deque[str] = collections.deque(maxlen=20)
        self._session_expiry_s = session_expiry_s
        self._autosave_s = autosave_s

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        executable = mosquitto_executable()
        if executable is None:
            raise BrokerUnavailable("the default MQTT broker needs mosquitto (Debian: apt-get install mosquitto "
                                    "mosquitto-dev; `make run` installs it), or use --mqtt-url")
        for port in (self._listeners.port, self._listeners.tls_port):
            if port is not None:
                check_port_free(self._listeners.host, port)
        library = await anyio.to_thread.run_sync(plugin_library, self._cache_dir)
        limit = raise_open_file_limit()
        if self._runtime is None:
            self._runtime = Path(tempfile.mkdtemp(prefix="iotdefender-mosquitto-"))  # mode 0700: holds the secret
        else:
            self._runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._runtime.chmod(0o700)
        config = self._runtime / "mosquitto.conf"
        config.write_text(render_config(self._listeners, PluginOptions(
            library=library, service_id=self.client_id, service_secret=self._secret, auth=self._gatekeeper.auth,
            acl=self._gatekeeper.acl, password_file=self._password_file, acl_file=self._acl_file,
            report_traffic=self._gatekeeper.observes_traffic, publish_rate=self._gatekeeper.publish_rate,
            max_subscriptions=self._gatekeeper.max_subscriptions,
            certificates="registered" if self.registered_certificates_only else "signed"),
            Persistence(self._runtime, self._session_expiry_s, self._autosave_s)))
        config.chmod(0o600)
        self._spawn(executable, config)
        try:
            await self._wait_until_listening()
        except OSError:
            if not self._set_aside_unreadable_sessions():
                raise
            self._spawn(executable, config)
            await self._wait_until_listening()
        host = _WILDCARD_HOSTS.get(self._listeners.host, self._listeners.host)
        self._client = ExternalBroker(
            BrokerUrl(host, self._listeners.port, False, self.client_id, self._secret), self._sink,
            client_id=self.client_id, report_filters=(), other_filters=(EVENTS_TOPIC, REPORTS_TOPIC),
            on_other=self._on_plugin_message, on_connected=self._on_service_connected,
            keepalive_s=SERVICE_KEEPALIVE_S)
        client = self._client
        self._replies = ReplyBatcher(asyncio.get_running_loop(),
                                     lambda batch: client.publish_now(REPLIES_TOPIC, batch, qos=0),
                                     taken_every=max(1, mosquitto_config.BATCHES_IN_FLIGHT // 8))
        await self._client.start()
        self._watcher = asyncio.create_task(self._supervise(executable, config), name="mosquitto-supervisor")
        log.info("mosquitto_started", pid=self._process.pid if self._process else None, open_file_limit=limit,
                 plugin=str(library))

    async def stop(self) -> None:
        """Stop Mosquitto; every connection it had ends with it, and is told as such
        (``connections_lost``): the service's own connection goes first, so the plugin's
        disconnect events of the devices reach nobody. Before, a device that did not connect again
        counted as connected from then on (a broker node's devices, to their detect node: no
        ``aws:disconnect-duration``, no away windows). Dated from the start of the stop: the
        connections end after it, and a device connects again (to another broker node) later."""
        stopping_at = time.time()
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self._client is not None:
            try:
                await asyncio.wait_for(self._client.stop(), timeout=3)
            except (TimeoutError, OSError):
                pass
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await anyio.to_thread.run_sync(process.wait, 5)
            except subprocess.TimeoutExpired:
                process.kill()
        if process is not None:
            self._gatekeeper.observer.connections_lost(stopping_at)
        if self._runtime is not None:
            if self._temporary_runtime:
                shutil.rmtree(self._runtime, ignore_errors=True)
            else:
                (self._runtime / "mosquitto.conf").unlink(missing_ok=True)

    def _spawn(self, executable: str, config: Path) -> None:
        """Started from the event loop's thread, which lives as long as the service: PR_SET_PDEATHSIG
        follows the forking thread (child_process.die_with_parent). In a session of its own, so that
        Ctrl-C in a terminal stops the service, which then stops Mosquitto after the last replies.
        A service that dies (kill -9) sends it SIGTERM, not SIGKILL: Mosquitto then saves the sessions
        before it exits, and frees the MQTT port only after that, so that the next start reads them all.
        A new process has no connections: the ones counted were the previous process's."""
        self.connections.reset()
        self._process = subprocess.Popen([executable, "-c", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         preexec_fn=functools.partial(die_with_parent, signal.SIGTERM),
                                         start_new_session=True,
                                         cwd=str(self._runtime))
        assert self._process.stdout is not None
        threading.Thread(target=self._relay_output, args=(self._process.stdout,), name="mosquitto-log",
                         daemon=True).start()

    def _relay_output(self, stream: IO[bytes]) -> None:
        """Mosquitto logs only errors and warnings (config.py): each line becomes one of ours, at
        most ``MOSQUITTO_LINES_BURST`` of a kind (``_line_kind``) per 10 s, the rest counted in a
        ``mosquitto_summary`` line. Clients can make Mosquitto write lines at will: one device
        reusing a QoS 2 packet id made 16,000 "Reused message ID" lines a second, and failed TLS
        handshakes, from anyone, 2,700 (an outside-in test); all were relayed."""
        relayed = LimitedLog(log, "mosquitto", None, level="warning", burst=MOSQUITTO_LINES_BURST)
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._output.append(line)
                if "should not be run as root" in line:  # the service's own choice: not news
                    log.debug("mosquitto", line=line)
                else:
                    relayed(_line_kind(line), line=line)

    async def _wait_until_listening(self) -> None:
        host = _WILDCARD_HOSTS.get(self._listeners.host, self._listeners.host)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                await asyncio.sleep(0.1)  # let the relay thread read the last lines
                # Every error line: Mosquitto says what is wrong (a line of --mqtt-acl-file) on one,
                # and only that it gave up on the next.
                errors = [line for line in self._output if "Error" in line]
                detail = "; ".join(errors) if errors else (
                    self._output[-1] if self._output else f"exit status {self._process.returncode}")
                raise OSError(f"mosquitto exited at start: {detail}")
            try:
                _, writer = await asyncio.open_connection(host, self._listeners.port)
                writer.close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise OSError(f"mosquitto did not listen on {host}:{self._listeners.port} "
                                  f"within {_READY_TIMEOUT_S:.0f} s") from None
                await asyncio.sleep(0.05)

    def _set_aside_unreadable_sessions(self) -> bool:
        """Mosquitto refuses to start on a mosquitto.db it cannot read ("Couldn't open database"):
        rename it (kept for a look) so that the broker starts without the sessions rather than not at
        all. Whether it did."""
        database = self._runtime / "mosquitto.db" if self._runtime is not None else None
        if database is None or not database.exists() or not any("open database" in line for line in self._output):
            return False
        aside = database.with_name(f"mosquitto.db.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
        database.rename(aside)
        log.error("mqtt_sessions_unreadable", set_aside=str(aside),
                  detail="; ".join(line for line in self._output if "Error" in line))
        self._output.clear()
        return True

    async def _supervise(self, executable: str, config: Path) -> None:
        """Restart Mosquitto if it dies on its own (devices and the service's client reconnect; the
        persistent sessions are those of its last save)."""
        delay = 1.0
        while not self._stopping:
            await asyncio.sleep(0.5)
            process = self._process
            if process is None or process.poll() is None:
                continue
            log.error("mosquitto_exited", status=process.returncode, last_line=self._output[-1] if self._output else None,
                      restart_in_s=delay)
            self._gatekeeper.observer.connections_lost(time.time())
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            self._set_aside_unreadable_sessions()
            if not self._stopping:
                self._spawn(executable, config)

    # -- the plugin's channel -------------------------------------------------------------------
    def _on_plugin_message(self, topic: str, payload: bytes) -> None:
        if topic == REPORTS_TOPIC:
            count = 0
            for thing, encoding, report, received in decode_reports(payload):
                self._sink(thing, encoding, report, received)
                count += 1
            head = report_batch_head(payload)
            if head is not None:
                self._handover.reports(head.instance, head.number, head.before, count)
                if self._replies is not None:
                    self._replies.published(head.replies_of, head.replies_done)
        elif topic == EVENTS_TOPIC:
            apply_events(payload, self._gatekeeper.observer, self._gatekeeper, self.connections, self._handover,
                         self._replies)
        else:
            return
        # Read (its reports submitted, its events applied): the plugin may send one more batch
        # ("flow" in defender_plugin.c); told with this iteration's replies.
        taken = self._handover.next_batches()
        if taken is not None and self._replies is not None:
            self._replies.taken(encode_taken(*taken))

    def _control(self, verb: str, client_id: str) -> None:
        """A command with the replies, in their order (frames.ReplyBatcher.command)."""
        if self._replies is None:
            raise RuntimeError("the broker is not started")
        self._replies.command(verb.encode() + b"\0" + client_id.encode())

    def _control_now(self, command: bytes) -> None:
        """A command on the control topic, ahead of the replies: what a new connection of the service
        must tell the plugin before anything else (the lists, then "ready": until it, the plugin
        confirms no reply, and the replies wait for that word)."""
        if self._client is None:
            raise RuntimeError("the broker is not started")
        self._client.publish_now(CONTROL_TOPIC, command, qos=1)

    def _on_service_connected(self) -> None:
        """On every (re)connection of the service's client, once it has asked for its subscriptions
        (sent before this on the same connection, so Mosquitto has them first): a restarted
        Mosquitto forgets its deny list, so give it again; then tell the plugin devices may
        connect (it refuses them until then: their reports would reach nobody); then send again
        the replies (and commands) the plugin did not say it published."""
        for client_id in sorted(self._refused):
            self._control_now(b"refuse\0" + client_id.encode())
        denied = [certificate_id + name for certificate_id, name in sorted(self._denied_certificates.items())]
        for command in _certificate_commands("deny-certificates", denied):
            self._control_now(command)
        for command in _certificate_commands("accept-certificates", sorted(self._accepted_certificates)):
            self._control_now(command)
        for command in _certificate_commands("certificate-things", [
                _things_target(key, name, things) for key, (name, things) in sorted(self._certificate_things.items())]):
            self._control_now(command)
        self._control_now(b"ready\0" + self.client_id.encode())
        if self._replies is not None:  # what the connection that broke did not deliver (frames.py)
            self._replies.send_again()

    # -- the adapter's interface ----------------------------------------------------------------
    def publish_now(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Queue a PUBLISH; the plugin publishes it with the others of this event-loop iteration."""
        if self._replies is None:
            raise RuntimeError("the broker is not started")
        self._replies.add(topic, payload, qos)

    async def disconnect(self, client_id: str) -> None:
        """Close the device's connection now; it may reconnect."""
        self._control("kick", client_id)

    async def refuse(self, client_id: str) -> None:
        """Close the device's connection and refuse its CONNECTs until ``allow``."""
        self._refused.add(client_id)
        self._control("refuse", client_id)

    async def allow(self, client_id: str) -> None:
        self._refused.discard(client_id)
        self._control("allow", client_id)

    @property
    def refused(self) -> frozenset[str]:
        return frozenset(self._refused)

    def deny_certificates(self, refused: dict[str, str]) -> None:
        """Refuse every CONNECT made with these certificates ({id: common name}; the id is the
        lowercase hex SHA-256 of its DER encoding), and close the connection of the common name (the
        client id a certificate names under ``--mqtt-auth cert``) if it was made with it."""
        self._denied_certificates.update(refused)
        self._accepted_certificates.difference_update(refused)  # as the plugin's deny does
        if self._replies is not None:  # else sent when the service's client connects
            for command in _certificate_commands("deny-certificates", [key + name for key, name in refused.items()]):
                self._replies.command(command)

    def allow_certificates(self, certificate_ids: Iterable[str]) -> None:
        """Neither refused for its status nor accepted as registered ACTIVE: ACTIVE again while
        any certificate the CA signed connects; deleted under registered_certificates_only (then
        refused as never registered); or its row gone from the database."""
        allowed = []
        for key in certificate_ids:
            denied = self._denied_certificates.pop(key, None) is not None
            if denied or key in self._accepted_certificates:
                self._accepted_certificates.discard(key)
                allowed.append(key)
        if self._replies is not None:
            for command in _certificate_commands("allow-certificates", allowed):
                self._replies.command(command)

    def accept_certificates(self, certificate_ids: Iterable[str]) -> None:
        """Registered ACTIVE: under ``registered_certificates_only`` only these connect; no longer
        refused for their status."""
        accepted = [key for key in certificate_ids if key not in self._accepted_certificates]
        for key in accepted:
            self._accepted_certificates.add(key)
            self._denied_certificates.pop(key, None)
        if self._replies is not None:
            for command in _certificate_commands("accept-certificates", accepted):
                self._replies.command(command)

    def attach_certificates(self, attachments: Mapping[str, tuple[str, tuple[str, ...]]]) -> None:
        """{certificate id: (its common name, the things it is attached to; none: attached to none)}:
        under ``--mqtt-auth cert`` a certificate attached to things connects only with one of their
        names as its client id; one attached to none by its common name. A connection it no longer
        allows is closed."""
        targets = []
        for key, (name, things) in attachments.items():
            if things:
                self._certificate_things[key] = (name, things)
            elif self._certificate_things.pop(key, None) is None:
                continue
            targets.append(_things_target(key, name, things))
        if self._replies is not None:
            for command in _certificate_commands("certificate-things", targets):
                self._replies.command(command)

    @property
    def attached_certificates(self) -> Mapping[str, tuple[str, tuple[str, ...]]]:
        """The certificates attached to things, with their common name; as below, a view."""
        return MappingProxyType(self._certificate_things)

    @property
    def denied_certificates(self) -> Mapping[str, str]:
        """A read-only view (changes with the broker's list): a copy at each of a bulk revocation's
        writes cost milliseconds at 100,000 certificates."""
        return MappingProxyType(self._denied_certificates)

    @property
    def accepted_certificates(self) -> AbstractSet[str]:
        """The certificates registered ACTIVE, under registered_certificates_only; as above, a view."""
        return self._accepted_certificates


def _things_target(certificate_id: str, common_name: str, things: tuple[str, ...]) -> str:
    """A certificate-things target (defender_plugin.c): thing names hold no comma nor slash."""
    return f"{certificate_id}{','.join(things)}/{common_name}"


def _certificate_commands(verb: str, targets: list[str]) -> Iterator[bytes]:
    """As few commands as hold ``targets`` (defender_plugin.c, "deny-certificates")."""
    chunk: list[bytes] = []
    size = 0
    for target in targets:
        encoded = target.encode()
        if chunk and size + len(encoded) + 1 > CONTROL_BATCH_BYTES:
            yield verb.encode() + b"\0" + b"\0".join(chunk)
            chunk, size = [], 0
        chunk.append(encoded)
        size += len(encoded) + 1
    if chunk:
        yield verb.encode() + b"\0" + b"\0".join(chunk)
