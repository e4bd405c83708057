"""Where accepted datapoints become durable and are evaluated: one transaction per batch.

Ingest (device reports) and the cloud-side closer (broker windows) hand their batches to a
``BatchStore``; it stores the retained datapoints and report states and runs detection inside the
same transaction, so an acknowledged datapoint, the events it caused, the alarm states and the
alert outbox rows commit together or not at all.

Two implementations of the same contract:
- ``LocalBatchStore`` does it in the calling process (tests, tools, ``--detection-worker off``);
- ``WorkerBatchStore`` does it in a child process (the default for ``serve``). One Python process
  shares one core's worth of the GIL between the MQTT client, parsing, evaluation and SQLite;
  the child gives evaluation and storage the second core (bench/pipeline.py measures the
  difference). The child owns the alarm states; the parent keeps the broker, the API, the console
  and alert delivery, and applies the Prometheus counters from the events each batch reports back.

A child that dies fails the batches in flight (their reports are not acknowledged, so devices send
them again) and is started again on the next batch; it dies with its parent (PR_SET_PDEATHSIG),
so a ``kill -9`` of the service never leaves a writer behind that could commit after a restart.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any, Protocol

import structlog
from sqlalchemy.engine import Engine

from iotdefender.child_process import die_with_parent
from iotdefender.pipeline.detection import COUNTERS, DetectionService, PendingDetection
from iotdefender.engine.alarm import EventType
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.store import metric_values
from iotdefender.store.availability import StoreUnavailable, is_unavailable, log_unless_outage
from iotdefender.store.database import writing

log = structlog.get_logger("iotdefender.batch_store")

# (thing, datapoints, time, report id): a device report, or a cloud-side window (report id None).
BatchItem = tuple[str, dict[str, dict[str, Any]], float, int | None]
EventSummary = tuple[str, str, str]  # (event type, profile, behavior): what the counters need


class BatchStore(Protocol):
    # How many batches ingest may have in flight at once (calls from as many threads).
    pipeline_depth: int

    def store_batch(self, items: Sequence[BatchItem]) -> list[EventSummary]: ...

    def sweep(self, now: float) -> list[EventSummary]: ...

    def invalidate(self) -> None: ...

    def close(self) -> None: ...


def _summaries(pending: PendingDetection | None) -> list[EventSummary]:
    if pending is None:
        return []
    return [(e.event_type.value, e.profile_name, e.behavior.get("name", "")) for e in pending.events]


class LocalBatchStore:
    """The transaction in this process; detection's after-commit effects happen here too."""

    pipeline_depth = 1  # one transaction at a time: the engine's state is this process's

    def __init__(self, engine: Engine, monitoring: MonitoringIndex, detection: DetectionService) -> None:
        self.engine = engine
        self.monitoring = monitoring
        self.detection = detection

    def store_batch(self, items: Sequence[BatchItem]) -> list[EventSummary]:
        """Retained datapoints (the series a monitoring profile uses or retains), the last report
        id of each thing, and every datapoint evaluated — in one transaction."""
        reports: list[metric_values.RetainedReport] = []
        states: dict[str, tuple[str, int, float]] = {}
        self.monitoring.prime([item[0] for item in items])
        for thing, datapoints, at, report_id in items:
            retained = self.monitoring.retained_metrics(thing)
            kept = {m: v for m, v in datapoints.items() if m in retained}
            if kept:
                reports.append(metric_values.RetainedReport(thing, at, kept))
            if report_id is not None:
                states[thing] = (thing, report_id, at)
        pending = None
        try:
            with writing(self.engine) as conn:
                metric_values.insert_reports(conn, reports)
                metric_values.upsert_report_states(conn, states.values())
                pending = self.detection.evaluate_in(conn, [(t, d, at) for t, d, at, _ in items])
        except BaseException as error:
            self.detection.committed(pending, ok=False)
            if isinstance(error, Exception) and is_unavailable(error):
                raise StoreUnavailable(f"{type(error).__name__}: {error}") from error
            raise
        self.detection.committed(pending, ok=True)
        return _summaries(pending)

    def sweep(self, now: float) -> list[EventSummary]:
        return _summaries(self.detection.sweep(now))

    def invalidate(self) -> None:
        self.monitoring.invalidate()

    def close(self) -> None:
        pass


# -- the child process --------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerConfig:
    """Everything the child needs to build its own LocalBatchStore (picklable)."""

    database_url: str
    arn_prefix: str
    invalidation_period: float
    time_scale: float
    alert_subscriptions: Path | None
    sns_endpoint_url: str | None
    region: str
    log_format: str
    history_interval: float = 30.0


def start_compaction(engine: Engine, interval_s: float) -> None:
    """History compaction (store/history.py) on a thread of whichever process stores the batches:
    with the detection worker on, that keeps the decoding of new rows off the broker's process."""
    from iotdefender.store.history import Compactor

    compactor = Compactor(engine)

    def run() -> None:
        while True:
            time.sleep(interval_s)
            try:
                compactor.run_once()
            except Exception as error:
                log_unless_outage(log, "history_compaction_failed", error)

    threading.Thread(target=run, name="history-compaction", daemon=True).start()


def worker_main(pipe: Pipe, config: WorkerConfig) -> None:
    """The child: requests in, replies out, one at a time, until the pipe closes."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    from iotdefender.alerts.outbox import AlertRouter
    from iotdefender.alerts.subscriptions import load_subscriptions
    from iotdefender.logging_setup import configure_logging
    from iotdefender.store.database import create_engine

    configure_logging(config.log_format)
    engine = create_engine(config.database_url)
    monitoring = MonitoringIndex(engine, config.arn_prefix)
    alerts = AlertRouter(engine, load_subscriptions(config.alert_subscriptions), config.sns_endpoint_url,
                         config.region)
    detection = DetectionService(engine, monitoring, alerts, config.invalidation_period, config.time_scale)
    detection.load()
    store = LocalBatchStore(engine, monitoring, detection)
    start_compaction(engine, config.history_interval)
    gc.freeze()  # as the service does: long-lived startup objects stay out of every collection
    pipe.send(("ready", 0, None))
    while True:
        try:
            kind, request_id, body = pipe.recv()
        except (EOFError, OSError):
            return
        try:
            if kind == "store":
                result: Any = store.store_batch(body)
            elif kind == "sweep":
                result = store.sweep(body)
            elif kind == "invalidate":
                store.invalidate()
                continue
            elif kind == "stop":
                return
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception as error:
            if is_unavailable(error):  # an outage: the parent logs the change of state, once
                pipe.send(("unavailable", request_id, f"{type(error).__name__}: {error}"))
                continue
            if kind == "store" and len(body) > 1:  # the parent isolates the culprit; its traceback follows
                log.warning("batch_failed", request=kind, items=len(body), error=f"{type(error).__name__}: {error}")
            else:
                log.exception("batch_failed", request=kind)
            pipe.send(("error", request_id, f"{type(error).__name__}: {error}"))
            continue
        pipe.send(("ok", request_id, result))


# -- the parent's side ----------------------------------------------------------------------------
class WorkerFailed(RuntimeError):
    """The child failed the request, or died with it in flight."""


class WorkerStartFailed(WorkerFailed, StoreUnavailable):
    """No child could be started (e.g. it cannot load the alarm states from an unreachable
    database): no item of the batch is at fault, so the batch is answered as an outage
    (retryable) rather than bisected into one failing restart per item."""


@dataclass
class _Call:
    done: threading.Event
    outcome: tuple[str, Any] | None = None


class WorkerBatchStore:
    """Runs LocalBatchStore in a child process; thread-safe; blocks the calling thread per call."""

    # The child takes requests one after another from its pipe: a second batch sent while the
    # first is being stored waits there, so the child never idles between batches.
    pipeline_depth = 2

    START_TIMEOUT_S = 60.0

    def __init__(self, config: WorkerConfig, on_events: Callable[[list[EventSummary]], None]) -> None:
        self._config = config
        self._on_events = on_events
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # sending and (re)starting
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self._pipe: Pipe | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._closing = False
        self._spawn_requests: queue.Queue[queue.Queue[Any] | None] = queue.Queue()
        self._spawner = threading.Thread(target=self._spawn_loop, name="detection-spawner", daemon=True)

    def start(self) -> None:
        self._spawner.start()
        with self._lock:
            self._start_locked()

    def _spawn_loop(self) -> None:
        """Starts every child, and lives as long as the store. PR_SET_PDEATHSIG fires when the
        *thread* that started the child ends, not the process: a child started from a short-lived
        pool thread (anyio retires idle ones after 10 s) was killed with it."""
        while True:
            done = self._spawn_requests.get()
            if done is None:
                return
            try:
                parent, child = self._context.Pipe(duplex=True)
                process = self._context.Process(target=worker_main, args=(child, self._config),
                                                name="iotdefender-detection", daemon=True)
                process.start()
                child.close()
                done.put((parent, process))
            except BaseException as error:
                done.put(error)

    def _start_locked(self) -> None:
        done: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._spawn_requests.put(done)
        outcome = done.get()
        if isinstance(outcome, BaseException):
            raise WorkerStartFailed(f"the detection worker could not start ({outcome})")
        parent, process = outcome
        if not parent.poll(self.START_TIMEOUT_S):
            process.kill()
            raise WorkerStartFailed("the detection worker did not start")
        try:
            parent.recv()  # ("ready", 0, None)
        except EOFError:
            raise WorkerStartFailed("the detection worker exited while starting") from None
        self._pipe, self._process = parent, process
        threading.Thread(target=self._read, args=(parent,), name="detection-replies", daemon=True).start()
        log.info("detection_worker", pid=process.pid)

    def _read(self, pipe: Pipe) -> None:
        while True:
            try:
                kind, request_id, result = pipe.recv()
            except (EOFError, OSError):
                break
            call = self._calls.pop(request_id, None)
            if call is not None:
                call.outcome = (kind, result)
                call.done.set()
        # The child is gone: every call still waiting on this pipe fails (its batch is not acknowledged).
        with self._lock:
            if self._pipe is pipe:
                self._pipe = None
            for request_id, call in list(self._calls.items()):
                call.outcome = ("error", "the detection worker exited")
                call.done.set()
                self._calls.pop(request_id, None)
        if not self._closing:
            log.error("detection_worker_exited", exitcode=self._process.exitcode if self._process else None)

    def _call(self, kind: str, body: Any, wait: bool = True) -> Any:
        call = _Call(threading.Event())
        with self._lock:
            if self._pipe is None:
                if self._closing:
                    raise WorkerFailed("the detection worker is stopped")
                if self._process is not None:
                    self._process.join(5)
                self._start_locked()
            request_id = next(self._ids)
            if wait:
                self._calls[request_id] = call
            assert self._pipe is not None
            try:
                self._pipe.send((kind, request_id, body))
            except (OSError, ValueError) as error:
                self._calls.pop(request_id, None)
                raise WorkerFailed(f"the detection worker is unreachable ({error})") from None
        if not wait:
            return None
        call.done.wait()
        assert call.outcome is not None
        status, result = call.outcome
        if status == "unavailable":
            raise StoreUnavailable(str(result))
        if status != "ok":
            raise WorkerFailed(str(result))
        return result

    def store_batch(self, items: Sequence[BatchItem]) -> list[EventSummary]:
        events = self._call("store", list(items))
        self._counted(events)
        return events

    def sweep(self, now: float) -> list[EventSummary]:
        events = self._call("sweep", now)
        self._counted(events)
        return events

    def invalidate(self) -> None:
        try:
            self._call("invalidate", None, wait=False)
        except WorkerFailed:
            pass  # a new worker starts with a fresh monitoring index anyway

    def _counted(self, events: list[EventSummary]) -> None:
        for kind, profile, behavior in events:
            COUNTERS[EventType(kind)].labels(profile, behavior).inc()
        if events:
            self._on_events(events)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            pipe, process = self._pipe, self._process
            if pipe is not None:
                try:
                    pipe.send(("stop", 0, None))
                except OSError:
                    pass
        if process is not None:
            process.join(10)
            if process.is_alive():
                process.kill()
        self._spawn_requests.put(None)
