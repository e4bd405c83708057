"""How long the transactions that store and evaluate datapoints take, and how much each holds.

Observed where the transaction commits: ``LocalBatchStore`` (the single box's writer, in this
process or in the detection worker), ``PartitionBatchStore`` (a cluster's detect node) and
``PartitionWindowStore`` (a cluster's cloud-side windows). The detection worker is a child process
whose registry nobody scrapes, so its store collects what it timed (``Timings``) and the worker
sends it back with the batch's result, to be observed in the process that serves ``/metrics``
(worker_client.py). Only committed transactions are observed (a failed attempt, bisected by batch
isolation, is not a commit), each on one of two pairs of histograms: one holding device reports
(``iotdefender_detect_transaction_*``, what operators read as "a report's commit"), or one
holding only the cloud-side metrics of a window's things (``iotdefender_cloud_window_transaction_*``:
at the end of each window every connected device's metrics are stored and evaluated, a burst a
report's figure would hide or be skewed by).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog
from prometheus_client import Histogram

from iotdefender.log_limits import LimitedLog

TRANSACTION_SECONDS = Histogram(
    "iotdefender_detect_transaction_seconds",
    "Seconds of one committed transaction storing and evaluating device reports (the commit included)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
TRANSACTION_REPORTS = Histogram(
    "iotdefender_detect_transaction_reports", "Device reports in one committed transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
WINDOW_SECONDS = Histogram(
    "iotdefender_cloud_window_transaction_seconds",
    "Seconds of one committed transaction storing and evaluating the cloud-side metrics of a window's "
    "things (the commit included)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
WINDOW_THINGS = Histogram(
    "iotdefender_cloud_window_transaction_things", "Things whose cloud-side metrics one committed transaction held",
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000))

SLOW_S = 1.0
SLOW_LOG = LimitedLog(structlog.get_logger("iotdefender.store"), "transaction_slow",
                      "iotdefender_detect_transaction_seconds", level="warning")

#: Told (seconds, reports, cloud-side things) of each committed transaction.
TransactionObserver = Callable[[float, int, int], None]


def observe(seconds: float, reports: int, windows: int = 0) -> None:
    """The observer of a store in the process that serves ``/metrics``: a transaction with device
    reports counts as theirs (a single box's batch may carry a window's things along). One that
    took ``SLOW_S`` or more is logged too: every report behind it waited as long (a disk's sync
    stalled, the write lock held elsewhere), which only the histogram said before."""
    if seconds >= SLOW_S:
        SLOW_LOG("reports" if reports else "cloud_window", seconds=round(seconds, 3), reports=reports,
                 cloud_things=windows)
    if reports:
        TRANSACTION_SECONDS.observe(seconds)
        TRANSACTION_REPORTS.observe(reports)
    elif windows:
        WINDOW_SECONDS.observe(seconds)
        WINDOW_THINGS.observe(windows)


class Timings:
    """The observer of a store in a child process: keeps what it is told until ``take``."""

    def __init__(self) -> None:
        self._kept: list[tuple[float, int, int]] = []

    def __call__(self, seconds: float, reports: int, windows: int = 0) -> None:
        self._kept.append((seconds, reports, windows))

    def take(self) -> list[tuple[float, int, int]]:
        kept, self._kept = self._kept, []
        return kept


@contextmanager
def timed(reports: int, observer: TransactionObserver, windows: int = 0) -> Iterator[None]:
    """Tell ``observer`` the block's seconds if it completes and holds reports or window things."""
    started = time.perf_counter()
    yield
    if reports or windows:
        observer(time.perf_counter() - started, reports, windows)
