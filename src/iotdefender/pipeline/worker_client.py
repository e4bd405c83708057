"""The service's side of the detection worker: a ``BatchStore`` that runs each batch in the child.

Thread-safe: ingest keeps up to ``pipeline_depth`` batches in flight, each call blocking its own
thread until the child answers. A child that dies fails the batches in flight (their reports are
not acknowledged, so devices send them again) and is started again on the next batch, which
reloads the alarm states from the database.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

import structlog

from iotdefender.pipeline.batch_store import BatchItem, EventListener, EventSummary
from iotdefender.pipeline.transaction_metrics import TransactionObserver, observe
from iotdefender.pipeline.worker import WorkerConfig, worker_main
from iotdefender.pipeline.worker_standby import WorkerStandby
from iotdefender.store.availability import StoreUnavailable

log = structlog.get_logger("iotdefender.batch_store")


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

    def __init__(self, config: WorkerConfig, on_events: EventListener,
                 on_transaction: TransactionObserver = observe, standby: WorkerStandby | None = None) -> None:
        self._config = config
        self._standby = standby  # the first start's child, already importing (worker_standby.py)
        self._on_events = on_events
        self._on_transaction = on_transaction  # the child's timings, observed here where /metrics is
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
        # The worker ignores SIGTERM (worker.py); multiprocessing's own exit handler stops daemon
        # children with SIGTERM and then joins them without a timeout, so a service that exits
        # without ``close`` (a failed start: a busy port, a malformed ACL file) waited for ever.
        # Registered after multiprocessing's, this one runs first (atexit is last in, first out).
        atexit.register(self._kill_at_exit)
        with self._lock:
            self._start_locked()

    def _kill_at_exit(self) -> None:
        process = self._process
        if process is not None and process.is_alive():
            process.kill()
            process.join(5)

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

    def _started_child(self) -> tuple[Pipe, multiprocessing.process.BaseProcess]:
        standby, self._standby = self._standby, None
        if standby is not None:
            try:
                return standby.take(self._config)
            except (OSError, ValueError):
                pass  # it died while importing: start one the usual way
        done: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._spawn_requests.put(done)
        outcome = done.get()
        if isinstance(outcome, BaseException):
            raise WorkerStartFailed(f"the detection worker could not start ({outcome})")
        parent, process = outcome
        return parent, process

    def _start_locked(self) -> None:
        parent, process = self._started_child()
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
        events, timings = self._call("store", list(items))
        for seconds, reports, windows in timings:
            self._on_transaction(seconds, reports, windows)
        return self._counted(events)

    def sweep(self, now: float) -> list[EventSummary]:
        return self._counted(self._call("sweep", now))

    def invalidate(self) -> None:
        try:
            self._call("invalidate", None, wait=False)
        except WorkerFailed:
            pass  # a new worker starts with a fresh monitoring index anyway

    def _counted(self, events: list[EventSummary]) -> list[EventSummary]:
        self._on_events(events)  # counted here, in the process that serves /metrics
        return events

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
        if self._standby is not None:
            self._standby.discard()
        self._spawn_requests.put(None)
