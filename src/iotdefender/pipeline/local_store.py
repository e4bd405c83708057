"""The batch unit of work in this process, and the one function that assembles it.

``open_local_store`` is used by both composition roots: the service with ``--detection-worker
off``, and the detection worker (worker.py), which runs exactly this store in a child process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.engine import Connection, Engine

from iotdefender.alerts.metrics_export import export_rows
from iotdefender.alerts.routes import AlertRoutes
from iotdefender.pipeline.batch_store import BatchItem, EventListener, EventSummary, summaries
from iotdefender.pipeline.detection import DetectionService, DetectionTransaction
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.pipeline.transaction_metrics import TransactionObserver, observe, timed
from iotdefender.store import alert_outbox, metric_values
from iotdefender.store.availability import StoreUnavailable, is_unavailable, log_unless_outage

if TYPE_CHECKING:
    from iotdefender.store.history import Compactor

log = structlog.get_logger("iotdefender.batch_store")


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline needs besides its database, built once from the settings; picklable, so
    the detection worker receives the very same object."""

    arn_prefix: str  # "arn:aws:iot:{region}:{account}:"
    invalidation_period: float
    time_scale: float
    alert_routes: AlertRoutes
    history_interval: float = 30.0


def store_reports(run: DetectionTransaction, monitoring: MonitoringIndex, items: Sequence[BatchItem]
                  ) -> dict[str, int]:
    """The rows of a batch and its evaluation, in the transaction ``run``: the retained datapoints
    (the series a monitoring profile uses or retains), the last report id of each thing, the
    metrics export's messages (alerts/metrics_export.py), and every datapoint evaluated. Returns
    the report id stored last for each thing (what a ``CommitCheck`` of report states looks for).
    Shared by every batch store that runs the transaction here."""
    reports: list[metric_values.RetainedReport] = []
    states: dict[str, tuple[str, int, float]] = {}
    for thing, datapoints, at, report_id in items:
        retained = monitoring.retained_metrics(thing)
        kept = {m: v for m, v in datapoints.items() if m in retained}
        if kept:
            reports.append(metric_values.RetainedReport(thing, at, kept))
        if report_id is not None:
            states[thing] = (thing, report_id, at)
    metric_values.insert_reports(run.conn, reports, run.partition_of)
    metric_values.upsert_report_states(run.conn, states.values())
    alert_outbox.insert_pending(run.conn, export_rows(items, monitoring.profiles_for,
                                                      lambda topic: monitoring.arn(f"topic/{topic}"), time.time()))
    run.evaluate_in([(t, d, at) for t, d, at, _ in items])
    return {thing: report_id for thing, report_id, _ in states.values()}


class LocalBatchStore:
    """The transaction in this process; detection's after-commit effects happen here too."""

    pipeline_depth = 1  # one transaction at a time: the engine's state is this process's

    def __init__(self, engine: Engine, monitoring: MonitoringIndex, detection: DetectionService,
                 on_events: EventListener, on_transaction: TransactionObserver = observe) -> None:
        self.engine = engine
        self.monitoring = monitoring
        self.detection = detection
        self._on_events = on_events
        self._on_transaction = on_transaction  # each committed transaction's seconds and reports
        # thing -> the highest report id of an unconfirmed transaction: perhaps stored, perhaps not
        self._maybe_stored: dict[str, int] = {}

    def store_batch(self, items: Sequence[BatchItem]) -> list[EventSummary]:
        """Retained datapoints (the series a monitoring profile uses or retains), the last report
        id of each thing, and every datapoint evaluated — in one transaction.

        A report that an unconfirmed transaction (detection.py) may have stored is looked up in
        this transaction: found, it is not stored or evaluated again, and counts as stored (its
        device was answered ``ServiceUnavailable`` and resent it; now it hears ``accepted``).
        """
        self.monitoring.prime([item[0] for item in items])
        run = None
        try:
            reports = sum(1 for item in items if item[3] is not None)  # not the cloud-side windows
            with timed(reports, self._on_transaction, len(items) - reports), self.detection.transaction() as run:
                marks = store_reports(run, self.monitoring, self._not_yet_stored(run.conn, items))
                run.commit_check = (lambda conn: metric_values.reports_stored(conn, marks)) if marks else None
        except Exception as error:
            if run is not None and run.commit_unconfirmed:
                for thing, _, _, report_id in items:
                    if report_id is not None:
                        self._maybe_stored[thing] = max(report_id, self._maybe_stored.get(thing, report_id))
            if is_unavailable(error):
                raise StoreUnavailable.caused_by(error) from error
            raise
        for thing, _, _, _ in items:
            self._maybe_stored.pop(thing, None)  # committed: this thing's stored report id was read or advanced
        events = summaries(run.settled + run.events)
        self._on_events(events)
        return events

    def _not_yet_stored(self, conn: Connection, items: Sequence[BatchItem]) -> Sequence[BatchItem]:
        suspects = {item[0] for item in items if item[0] in self._maybe_stored}
        if not suspects:
            return items
        stored = metric_values.load_report_states(conn, suspects)
        return [item for item in items
                if item[3] is None or item[0] not in stored or item[3] > stored[item[0]][0]]

    def sweep(self, now: float) -> list[EventSummary]:
        pending = self.detection.sweep(now)
        events = summaries(pending.events) if pending is not None else []
        self._on_events(events)
        return events

    def invalidate(self) -> None:
        self.monitoring.invalidate()
        self.detection.invalidate_models()

    def close(self) -> None:
        pass


def start_compaction(engine: Engine, interval_s: float, compactor: Compactor | None = None) -> None:
    """History compaction (store/history.py), then the latest values' refresh
    (store/latest_values.py), on a thread of whichever process stores the batches:
    with the detection worker on, that keeps the decoding of new rows off the broker's process. A
    cluster's detect node passes a ``ClusterCompactor`` (one compactor at a time across nodes)."""
    from iotdefender.store.history import Compactor as SingleCompactor
    from iotdefender.store.latest_values import LatestValues

    compactor = compactor if compactor is not None else SingleCompactor(engine)
    latest = LatestValues(engine)  # the devices' latest values, folded from the new segments

    def run() -> None:
        while True:
            time.sleep(interval_s)
            try:
                compactor.run_once()
                latest.refresh()
            except Exception as error:
                log_unless_outage(log, "history_compaction_failed", error)

    threading.Thread(target=run, name="history-compaction", daemon=True).start()


def open_local_store(engine: Engine, config: PipelineConfig, monitoring: MonitoringIndex,
                     on_events: EventListener, on_transaction: TransactionObserver = observe) -> LocalBatchStore:
    """Detection with the alarm states loaded from the database, history compaction running, and
    the store over them (blocking: call it from a thread, not the event loop)."""
    detection = DetectionService(engine, monitoring, config.alert_routes, config.invalidation_period,
                                 config.time_scale)
    detection.load()
    start_compaction(engine, config.history_interval)
    return LocalBatchStore(engine, monitoring, detection, on_events, on_transaction)
