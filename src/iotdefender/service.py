"""``iotdefender serve``: assemble storage, the API, the broker and ingest, then run until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import anyio.to_thread
import structlog
import uvicorn
from sqlalchemy.engine import Connection, Engine
from starlette.applications import Starlette

from iotdefender.alerts.outbox import AlertDelivery
from iotdefender.alerts.routes import AlertRoutes
from iotdefender.alerts.subscriptions import load_subscriptions
from iotdefender.api import metrics_access
from iotdefender.api.app import ApiService, create_app
from iotdefender.api.credentials import CredentialStore, load_credentials
from iotdefender.api.extensions import Extensions
from iotdefender.api.http_limits import bounded_protocol
from iotdefender.backtest.jobs import BacktestJobs
from iotdefender.brokers.certificate_gate import CertificateGate
from iotdefender.brokers.external import ExternalBroker, parse_broker_url
from iotdefender.brokers.gatekeeper import Gatekeeper, check_password_file
from iotdefender.brokers.listeners import ListenerSettings, ReportSink, check_tls_files
from iotdefender.brokers.mosquitto.broker import MosquittoBroker
from iotdefender.brokers.mosquitto.build import BrokerUnavailable
from iotdefender.brokers.observer import NULL_OBSERVER, BrokerObserver
from iotdefender.cloud.service import CloudMetricsService
from iotdefender.console.app import create_console
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.issuer import CertificateIssuer
from iotdefender.controlplane.mitigation_execution import MitigationRunner
from iotdefender import loop_stall
from iotdefender.graceful import GracefulServer
from iotdefender.ingest.commit import ReportCommitter
from iotdefender.ingest.service import IngestService
from iotdefender.pipeline.batch_store import BatchStore, EventListener
from iotdefender.pipeline.counters import counting
from iotdefender.pipeline.local_store import PipelineConfig, open_local_store
from iotdefender.pipeline.ml_training import MlTrainer, TrainingSchedule, training_loop
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.pipeline.sweep_wake import SweepWake
from iotdefender.pipeline.worker import WorkerConfig
from iotdefender.pipeline.worker_client import WorkerBatchStore
from iotdefender.pipeline.worker_standby import WorkerStandby
from iotdefender.net_address import check_port_free
from iotdefender.role_metrics import ROLE_ORDER, describe_node, export_only
from iotdefender.settings import Settings
from iotdefender.store import alert_outbox, history, metric_values, mitigation, profiles, violations
from iotdefender.store.advisory import ML_TRAINING, RETENTION, run_alone
from iotdefender.store.availability import DatabaseHealth, is_unavailable, log_unless_outage
from iotdefender.store.database import create_engine, in_batches, long_statements, sqlite_url, upgrade_to_head

log = structlog.get_logger("iotdefender")


Broker = ExternalBroker | MosquittoBroker


class ConfigurationError(Exception):
    """A setting that cannot work; reported to the operator without a traceback."""


def open_context(settings: Settings) -> tuple[ServiceContext, CredentialStore]:
    """Open (and migrate) the database and load the access keys."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.database_url or sqlite_url(settings.data_dir)
    engine = create_engine(url, round_trip_timeout_s=settings.database_timeout)
    _migrate_when_reachable(engine)
    credentials, generated = load_credentials(settings.credentials_file, settings.data_dir, dict(os.environ))
    if generated is not None:
        log.info("credentials", file=str(generated.resolve()),
                 hint=f"AWS_SHARED_CREDENTIALS_FILE={generated.resolve()} aws iot ... "
                      f"--endpoint-url http://{settings.host}:{settings.api_port}")
        if settings.cluster_url is not None:  # keys are not compared between nodes (secrets): say it here
            log.warning("credentials_of_this_node_only", file=str(generated.resolve()),
                        reason="no --credentials: this node made access keys of its own, which the other nodes "
                               "do not know (their API answers UnrecognizedClientException); give every node "
                               "the same file (docs/cluster.md, Running a cluster)")
    context = ServiceContext(engine=engine, region=settings.region, account_id=settings.account_id,
                             endpoint_address=settings.endpoint_address, issuer=certificate_issuer(settings))
    log.info("storage", dialect=engine.dialect.name,
             database=str(engine.url.render_as_string(hide_password=True)))
    return context, credentials


# How long a service starting beside its database (a reboot, a compose file) waits for it before
# saying so and exiting 2, as it waits for NATS in cluster mode (cluster_serve.connect).
DATABASE_FIRST_CONNECT_S = 10.0


def _migrate_when_reachable(engine: Engine, patience_s: float = DATABASE_FIRST_CONNECT_S) -> None:
    """Bring the schema to head once the database answers; a database that does not answer within
    ``patience_s`` is a ConfigurationError naming it (password hidden) and why, not a traceback
    of a hundred lines ending in exit 1."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            with long_statements():  # a migration may build an index over a large table
                upgrade_to_head(engine)
            return
        except Exception as error:
            if not is_unavailable(error):
                raise
            if time.monotonic() >= deadline:
                reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
                raise ConfigurationError(
                    f"--database-url: cannot connect to the database at "
                    f"{engine.url.render_as_string(hide_password=True)} within {patience_s:g} s ({reason})") from None
            time.sleep(1.0)


def certificate_issuer(settings: Settings) -> CertificateIssuer | None:
    """The broker's CA with its key, when the operator gave it (ConfigurationError if unusable)."""
    if settings.mqtt_ca_key is None:
        return None
    if not settings.mqtt_ca:
        raise ConfigurationError("--mqtt-ca-key needs --mqtt-ca, the CA certificate it is the key of")
    try:
        return CertificateIssuer.from_files(settings.mqtt_ca, settings.mqtt_ca_key)
    except (ValueError, OSError) as error:
        raise ConfigurationError(str(error)) from None


def build_api(settings: Settings) -> ApiService:
    """The API alone over the settings' database (tools and tests that need no pipeline)."""
    return ApiService(*open_context(settings))


def mqtt_auth(settings: Settings) -> str:
    """The MQTT authentication mode, checked against the files it needs (ConfigurationError)."""
    try:
        auth = settings.effective_mqtt_auth
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    if auth == "password":
        if settings.mqtt_password_file is None:
            raise ConfigurationError("--mqtt-auth password needs --mqtt-password-file")
        try:
            check_password_file(settings.mqtt_password_file)
        except (OSError, ValueError) as error:
            raise ConfigurationError(f"--mqtt-password-file: {error}") from None
    if auth == "cert" and (settings.mqtt_tls_port is None or not settings.mqtt_ca):
        raise ConfigurationError("--mqtt-auth cert needs --mqtt-tls-port and --mqtt-ca")
    if settings.mqtt_certificates == "registered" and (auth != "cert" or settings.mqtt_url is not None):
        raise ConfigurationError("--mqtt-certificates registered needs --mqtt-auth cert and the embedded broker "
                                 "(not --mqtt-url)")
    return auth


def gatekeeper_of(settings: Settings, auth: str, observer: BrokerObserver) -> Gatekeeper:
    """The device policy of the settings (``auth`` from ``mqtt_auth``, checked before anything
    starts), telling ``observer`` what it refuses: one mapping for the single box and a cluster's
    broker nodes."""
    return Gatekeeper(auth=auth, acl=settings.mqtt_acl, observer=observer,
                      publish_rate=settings.effective_mqtt_publish_rate,
                      max_subscriptions=settings.mqtt_max_subscriptions)


def validate(settings: Settings) -> None:
    if settings.time_scale <= 0:
        raise ConfigurationError("--time-scale must be a positive number")
    if settings.mqtt_max_subscriptions < 0 or settings.mqtt_publish_rate < 0:
        raise ConfigurationError("--mqtt-max-subscriptions and --mqtt-publish-rate are 0 (no limit) or more")
    if (ml_problem := settings.ml_problem()) is not None:
        raise ConfigurationError(ml_problem)
    if settings.mqtt_url is not None:
        try:
            parse_broker_url(settings.mqtt_url)
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
    if settings.mqtt_acl_file is not None:
        if settings.mqtt_url is not None:
            raise ConfigurationError("--mqtt-acl-file applies to the service's own broker; with --mqtt-url, "
                                     "give the ACL to that broker")
        try:
            settings.mqtt_acl_file.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigurationError(f"--mqtt-acl-file: {error}") from None
    certificate_issuer(settings)
    if settings.mqtt_tls_port is not None:
        try:
            check_tls_files(settings.mqtt_ca, settings.mqtt_cert, settings.mqtt_key)
        except (ValueError, OSError) as error:
            raise ConfigurationError(f"MQTT TLS listener: {error}") from None


def metrics_token(settings: Settings) -> str | None:
    """The token ``/metrics`` asks for, or None (open); a file that cannot give one refuses to start."""
    if settings.metrics_token_file is None:
        return None
    try:
        return metrics_access.load_token(settings.metrics_token_file)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"--metrics-token-file: {error}") from None


def _purge(engine: Engine, delete_batch: Callable[[Connection, float], int], cutoff: float) -> int:
    return in_batches(engine, lambda conn: delete_batch(conn, cutoff))


class Deleted(NamedTuple):
    """What a retention round deleted."""

    metric_values: int
    violation_events: int
    metric_segments: int
    alerts: int
    verifications: int
    mitigation_tasks: int = 0


def retention_round(engine: Engine, now: float, metrics_s: float, violations_s: float,
                    tasks_s: float = 90 * 86400.0) -> Deleted | None:
    """Delete what expired (datapoints, violation events, history segments, alerts delivered or
    dead as long ago as the events, verification states of violations left without events, Detect
    mitigation tasks that ended ``tasks_s`` ago with their executions), in
    small batches; how many of each, or None when another process of the cluster is doing it.
    Every detect node runs the loop; one at a time deletes (a PostgreSQL advisory lock:
    ``store/advisory.py``), where each deleted the same rows, its deletes waiting on the others'
    row locks."""
    def purge_all() -> Deleted:
        return Deleted(_purge(engine, metric_values.delete_older_than, now - metrics_s),
                       _purge(engine, violations.delete_events_older_than, now - violations_s),
                       _purge(engine, history.delete_segments_older_than, now - metrics_s),
                       _purge(engine, alert_outbox.delete_finished_before, now - violations_s),
                       in_batches(engine, violations.delete_orphan_verifications),
                       _purge(engine, mitigation.delete_tasks_ended_before, now - tasks_s))
    return run_alone(engine, RETENTION, purge_all)


async def retention_loop(engine: Engine, metrics_s: float, violations_s: float, tasks_s: float) -> None:
    """``retention_round`` a few times per period."""
    while True:
        await asyncio.sleep(min(max(min(metrics_s, violations_s) / 10, 1.0), 3600.0))
        try:
            deleted = await anyio.to_thread.run_sync(retention_round, engine, time.time(), metrics_s, violations_s,
                                                     tasks_s)
        except Exception as error:  # the next round retries; the loop must outlive a database outage
            log_unless_outage(log, "retention_failed", error)
            continue
        if deleted is None:
            continue
        if any(deleted):
            log.info("retention", **{f"{name}_deleted": count for name, count in deleted._asdict().items()})


def call_each(listeners: Sequence[Callable[[], object]]) -> None:
    for listener in listeners:
        listener()


def history_interval(settings: Settings) -> float:
    return min(max(settings.effective_metrics_window / 4, 1.0), 30.0)


async def sweep_loop(sweep: Callable[..., object], invalidation_s: float, *taken: Callable[[], object],
                     wake: SweepWake | None = None) -> None:
    """Invalidate silent or unmonitored alarms; often enough to be prompt, rarely enough to be cheap.

    ``sweep(now, *values)`` runs in a worker thread; ``taken`` are read on the event loop before
    each round (cluster mode: the partitions this node owns, which the event loop changes).
    ``wake`` (a control-plane change: a detach, a deleted profile, ...) starts a round at once,
    so the alarms the change ended are invalidated when it is made, not up to a period later."""
    if wake is not None:
        wake.bind()
    period = min(max(invalidation_s / 20, 0.5), 60.0)
    while True:
        if wake is None:
            await asyncio.sleep(period)
        else:
            await wake.wait(period)
        try:
            await anyio.to_thread.run_sync(sweep, time.time(), *(take() for take in taken))
        except Exception as error:
            log_unless_outage(log, "invalidation_sweep_failed", error)


def ml_training(settings: Settings, engine: Engine, monitoring: MonitoringIndex, on_published: Callable[[], None],
                alone: bool = False) -> Coroutine[Any, Any, None]:
    """ML Detect's trainer (pipeline/ml_training.py); detection hears of new models through
    ``on_published`` (the batch store's ``invalidate``, the way it hears of control-plane changes;
    in cluster mode a control notice to every node). ``alone``: cluster nodes share the database,
    and each look runs under an advisory lock, so one node at a time trains (store/advisory.py)."""
    schedule = TrainingSchedule(settings.effective_ml_training_period, settings.ml_min_datapoints,
                                settings.effective_ml_refresh_period, settings.effective_ml_expiry,
                                settings.time_scale)
    trainer = MlTrainer(engine, monitoring, schedule, on_published=on_published)

    def look_alone(now: float) -> object:
        return run_alone(engine, ML_TRAINING, lambda: trainer.run_once(now))

    return training_loop(look_alone if alone else trainer.run_once, schedule.loop_interval)


def load_alert_routes(settings: Settings) -> AlertRoutes:
    try:
        subscriptions = load_subscriptions(settings.alert_subscriptions)
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"--alert-subscriptions: {error}") from None
    return AlertRoutes(subscriptions, settings.sns_endpoint_url)


def warn_unreached_topics(engine: Engine, routes: AlertRoutes) -> None:
    """At start: one warning per SNS topic of the stored profiles that goes nowhere (a migration
    that kept the AWS topics, a destination removed from the settings)."""
    with engine.connect() as conn:
        unreached = routes.unreached_topics(profiles.all_profiles(conn))
    for topic, names in unreached.items():
        log.warning("alert_target_unreached", topic=topic, profiles=names, reason=routes.undeliverable(topic))


def pipeline_config(settings: Settings, context: ServiceContext, routes: AlertRoutes) -> PipelineConfig:
    return PipelineConfig(arn_prefix=context.arn(""), invalidation_period=settings.effective_invalidation_period,
                          time_scale=settings.time_scale, alert_routes=routes,
                          history_interval=history_interval(settings))


async def open_batch_store(settings: Settings, engine: Engine, config: PipelineConfig, monitoring: MonitoringIndex,
                           on_events: EventListener, standby: WorkerStandby | None = None) -> BatchStore:
    """Storage and detection of batches: in a child process (default) or in this one.

    ``standby``: the worker the command line started before importing the service, if it did."""
    if not settings.detection_worker:
        return await anyio.to_thread.run_sync(open_local_store, engine, config, monitoring, on_events)
    store = WorkerBatchStore(WorkerConfig(database_url=engine.url.render_as_string(hide_password=False),
                                          log_format=settings.log_format, pipeline=config,
                                          database_timeout=settings.database_timeout), on_events,
                             standby=standby)
    await anyio.to_thread.run_sync(store.start)
    return store


async def serve(settings: Settings, standby: WorkerStandby | None = None) -> None:
    validate(settings)
    token = metrics_token(settings)
    auth = mqtt_auth(settings)
    check_api_port(settings)  # after what the command itself gets wrong, which a free port would not fix
    routes = load_alert_routes(settings)
    context, credentials = open_context(settings)
    engine = context.engine
    health = DatabaseHealth.of(engine)
    monitoring = MonitoringIndex(engine, context.arn(""))
    alerts = AlertDelivery(engine, routes, settings.region, retry_base_s=1.0 / settings.time_scale,
                           sole_deliverer=True)
    store = await open_batch_store(settings, engine, pipeline_config(settings, context, routes), monitoring,
                                   on_events=counting(alerts.wake), standby=standby)

    ingest, replies = build_ingest(settings, engine, monitoring, store, health)
    cloud = CloudMetricsService(engine, monitoring, store, settings.effective_metrics_window,
                                minute_s=settings.effective_minute)
    gatekeeper = gatekeeper_of(settings, auth, cloud if settings.cloud_metrics else NULL_OBSERVER)
    backtests = BacktestJobs(context, monitoring, settings.time_scale, settings.effective_invalidation_period,
                             settings.backtest_max_datapoints)
    swept = SweepWake()  # after the caches are dropped: the sweep reads the changed control plane
    warn_unreached_topics(engine, routes)
    changed = (monitoring.invalidate, store.invalidate, swept)
    # This process, not the host: a restart after a kill takes the tasks it ran over, and says so.
    mitigations = MitigationRunner(context, f"{socket.gethostname()}:{os.getpid()}",
                                   on_change=lambda: call_each(changed), sole=True)
    broker, mqtt_endpoint = build_broker(settings, gatekeeper, ingest.submit)
    replies.broker = broker
    gate = certificate_gate(engine, broker)
    api = ApiService(context, credentials, on_change=changed, health=health,
                     on_write=(routes.profile_written, mitigations.wake, *([gate.written] if gate else [])),
                     extensions=Extensions(broker_events=cloud.ingest_events, dead_letters=alerts.dead_letters,
                                           backtests=backtests))
    nats_reader = None
    if settings.nats_events_url is not None:
        if settings.nats_monitor_url is None:
            raise ConfigurationError("--nats-events-url needs --nats-monitor-url (the client ids come from /connz)")
        # Imported here: nats-py and httpx (~0.1 s of every start) only for a NATS broker's events.
        from iotdefender.cloud.nats_events import NatsEventReader

        ignore = frozenset({broker.client_id}) if isinstance(broker, ExternalBroker) else frozenset()
        nats_reader = NatsEventReader(settings.nats_events_url, settings.nats_monitor_url, cloud,
                                      poll_s=min(1.0, settings.effective_metrics_window / 4), ignore=ignore)
    # The windows the last graceful stop kept: before the broker, so that none of its events is
    # counted in a window before the window's earlier counts are back.
    await anyio.to_thread.run_sync(cloud.resume)
    await ingest.start()
    if gate is not None:  # the certificates refused from the first CONNECT on
        await gate.refresh()
    try:
        await broker.start()
        if nats_reader is not None:
            try:
                await nats_reader.start()
            except Exception as error:  # nats-py raises its own error types for unreachable servers
                raise OSError(f"NATS system events: {error}") from None
    except (OSError, TimeoutError, BrokerUnavailable) as error:
        with contextlib.suppress(Exception):  # a half-started broker: end its child process if any
            await broker.stop()
        await ingest.stop()
        raise ConfigurationError(f"MQTT: cannot start ({error})") from None
    alerts.publish_mqtt_with(replies)  # metrics export's messages: on the broker, as the replies
    background = [
        asyncio.create_task(retention_loop(engine, settings.effective_metric_retention,
                                           settings.effective_violation_retention,
                                           settings.effective_mitigation_task_retention), name="retention"),
        asyncio.create_task(sweep_loop(store.sweep, settings.effective_invalidation_period, wake=swept),
                            name="invalidation"),
        asyncio.create_task(alerts.run(), name="alerts"),
        asyncio.create_task(mitigations.run(), name="mitigation-tasks"),
        asyncio.create_task(cloud.run(), name="cloud-metrics"),
        asyncio.create_task(ml_training(settings, engine, monitoring, store.invalidate), name="ml-training"),
        asyncio.create_task(loop_stall.watch(), name="event-loop-lag"),
        *([asyncio.create_task(gate.run(), name="certificates")] if gate else []),
    ]

    server = http_server(settings, create_app(api, create_console(api, monitoring, settings.time_scale, routes),
                                              metrics_token=token))
    export_only(ROLE_ORDER, embedded_broker=settings.mqtt_url is None)  # every role's metrics: one box is all three
    describe_node(socket.gethostname(), ROLE_ORDER)
    # Everything built so far (botocore's service model, the broker, caches) lives as long as the
    # service: move it out of the collector's reach, so that collections triggered by per-report
    # allocations do not walk it every time (measured: parsing took twice as long with a large heap).
    gc.freeze()
    log.info("ready", api=f"http://{settings.host}:{settings.api_port}",
             console=f"http://{settings.host}:{settings.api_port}/console/",
             mqtt=mqtt_endpoint,
             mqtt_tls=settings.mqtt_tls_port, mqtt_auth=gatekeeper.auth,
             mqtt_certificates=settings.mqtt_certificates if gatekeeper.auth == "cert" else None, region=settings.region,
             account_id=settings.account_id, data_dir=str(Path(settings.data_dir).resolve()),
             report_min_interval_s=settings.effective_report_min_interval, time_scale=settings.time_scale)
    try:
        await server.serve()
    finally:
        for task in background:
            task.cancel()
        if nats_reader is not None:
            await nats_reader.stop()
        await ingest.stop()  # those in flight answered while the broker can still deliver the answers
        await broker.stop()
        try:
            await anyio.to_thread.run_sync(cloud.suspend)  # after the broker: its last events are in
        except Exception as error:
            log_unless_outage(log, "cloud_windows_not_kept", error)
        await anyio.to_thread.run_sync(store.close)
        engine.dispose()


class BrokerReplies:
    """Ingest's reply publisher: replies go out through the broker, which is built after ingest
    (it delivers to ingest), so the broker is set once built."""

    def __init__(self) -> None:
        self.broker: Broker | None = None

    def __call__(self, topic: str, payload: bytes) -> None:
        assert self.broker is not None
        self.broker.publish_now(topic, payload, qos=1)


def build_ingest(settings: Settings, engine: Engine, monitoring: MonitoringIndex, reports: BatchStore | ReportCommitter,
                 health: DatabaseHealth) -> tuple[IngestService, BrokerReplies]:
    """Ingest with the settings' throttle and queue limit; set the returned replies' broker once built."""
    replies = BrokerReplies()
    return IngestService(engine, monitoring, reports, replies, settings.effective_report_min_interval,
                         queue_limit=settings.ingest_queue_limit, health=health), replies


def build_broker(settings: Settings, gatekeeper: Gatekeeper, submit: ReportSink
                 ) -> tuple[Broker, str]:
    """The device-facing broker (Mosquitto of our own, or an external one we join) and its endpoint."""
    if settings.mqtt_url is not None:
        return (ExternalBroker(parse_broker_url(settings.mqtt_url), submit, settings.mqtt_ca,
                               client_id=settings.mqtt_client_id, persistent=True),
                settings.mqtt_url_for_logs or settings.mqtt_url)
    listeners = ListenerSettings(settings.host, settings.mqtt_port, settings.mqtt_tls_port, settings.mqtt_ca,
                                 settings.mqtt_cert, settings.mqtt_key)
    return (MosquittoBroker(listeners, gatekeeper, submit, settings.mqtt_password_file,
                            runtime_dir=Path(settings.data_dir) / "mosquitto", acl_file=settings.mqtt_acl_file,
                            session_expiry_s=settings.effective_mqtt_session_expiry,
                            autosave_s=settings.effective_mqtt_autosave_interval,
                            registered_certificates_only=settings.mqtt_certificates == "registered"),
            f"mqtt://{settings.host}:{settings.mqtt_port}")


def certificate_gate(engine: Engine, broker: Broker) -> CertificateGate | None:
    """What makes the broker refuse the certificates registered and not ACTIVE: the embedded
    Mosquitto's plugin does it; a broker joined with ``--mqtt-url`` has its own authentication."""
    return CertificateGate(engine, broker) if isinstance(broker, MosquittoBroker) else None


def http_server(settings: Settings, app: Starlette) -> GracefulServer:
    # Open console pages keep a live event stream: shutting down does not wait for them for long.
    return GracefulServer(uvicorn.Config(app, host=settings.host, port=settings.api_port, loop="none",
                                         http=bounded_protocol(settings.api_read_timeout), log_config=None,
                                         access_log=False,
                                         lifespan="off", timeout_graceful_shutdown=3))


def check_api_port(settings: Settings) -> None:
    try:  # before anything starts: uvicorn would fail on it after `ready`, with a traceback
        check_port_free(settings.host, settings.api_port)
    except OSError as error:
        raise ConfigurationError(f"--api-port: {error}") from None


def run(settings: Settings, main: Callable[[Settings], Coroutine[Any, Any, None]] = serve) -> None:
    """Run ``main`` (the single box's ``serve``, or cluster_serve's ``serve_cluster``) until stopped."""
    import uvloop

    # A stored batch crosses four threads of this process (event loop -> anyio thread -> the
    # worker pipe's reader -> back), and a thread waiting for the GIL behind a busy event loop
    # waits a whole switch interval (5 ms by default) at each hop. Measured with
    # bench/pipeline.py at 15,000 devices and 5,000 reports/s: 0.5 ms took the most the service
    # answers from ~4,500 to ~6,200 reports/s and p99 from ~600 ms to ~110 ms.
    sys.setswitchinterval(0.0005)
    uvloop.run(main(settings))
    log.info("stopped")
