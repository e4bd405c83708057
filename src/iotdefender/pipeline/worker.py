"""The detection worker: a child process that runs the batch unit of work (``LocalBatchStore``).

Why a child: one Python process shares one core's worth of the GIL between the MQTT client,
parsing, evaluation and SQLite; the child gives evaluation and storage the second core
(bench/pipeline.py measures the difference). The child owns the alarm states; the parent keeps
the broker, the API, the console and alert delivery, and counts the events each batch reports
back (worker_client.py).

The child is assembled by the same function as the in-process store (``open_local_store``), from
one picklable ``WorkerConfig``; it dies with its parent (PR_SET_PDEATHSIG), so a ``kill -9`` of
the service never leaves a writer behind that could commit after a restart.

Requests on the pipe are ``(kind, request id, body)``; replies ``(status, request id, result)``
with status ``ok``, ``error`` or ``unavailable`` (a database outage). A ``store`` request's result
is ``(events, timings)``: the transactions' (seconds, reports), observed by the parent.
"""

from __future__ import annotations

import gc
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

import structlog

from iotdefender.child_process import DETECTION_WORKER_NAME, die_with_parent, name_this_process
from iotdefender.pipeline.batch_store import ignore_events
from iotdefender.pipeline.local_store import PipelineConfig, open_local_store
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.pipeline.transaction_metrics import Timings
from iotdefender.store.availability import is_unavailable

log = structlog.get_logger("iotdefender.batch_store")


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the child needs (picklable): where the database is, how to log, the pipeline."""

    database_url: str
    log_format: str
    pipeline: PipelineConfig
    database_timeout: float | None = None  # store/database.py ROUND_TRIP_TIMEOUT_S when None


def worker_main(pipe: Pipe, config: WorkerConfig) -> None:
    """The child: requests in, replies out, one at a time, until the pipe closes."""
    die_with_parent()
    name_this_process(DETECTION_WORKER_NAME)
    # The parent decides when to stop: Ctrl-C and systemd's default stop (KillMode=control-group)
    # signal every process of the service, and the worker dying of it at once logged an error at
    # every stop and left the parent's graceful stop without a worker. The parent's death still
    # kills it (SIGKILL, die_with_parent).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from iotdefender.logging_setup import configure_logging
    from iotdefender.store.database import create_engine

    configure_logging(config.log_format)
    engine = create_engine(config.database_url, round_trip_timeout_s=config.database_timeout)
    # The parent counts the events and observes the timings it is sent back: counted here, they
    # would never be scraped.
    timings = Timings()
    store = open_local_store(engine, config.pipeline, MonitoringIndex(engine, config.pipeline.arn_prefix),
                             on_events=ignore_events, on_transaction=timings)
    gc.freeze()  # as the service does: long-lived startup objects stay out of every collection
    pipe.send(("ready", 0, None))
    while True:
        try:
            kind, request_id, body = pipe.recv()
        except (EOFError, OSError):
            return
        try:
            if kind == "store":
                result: Any = (store.store_batch(body), timings.take())
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
