"""How long the transaction that stores and evaluates device reports takes, and how many it holds.

Observed where the transaction commits: ``LocalBatchStore`` (the single box's writer, in this
process or in the detection worker) and ``PartitionBatchStore`` (a cluster's detect node). The
detection worker is a child process whose registry nobody scrapes, so its store collects what it
timed (``Timings``) and the worker sends it back with the batch's result, to be observed in the
process that serves ``/metrics`` (worker_client.py). Only committed transactions holding at least
one device report are observed: a cloud-side window's batch or a failed attempt (bisected by
batch isolation) would mix other work into the figure operators read as "a report's commit".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import Histogram

TRANSACTION_SECONDS = Histogram(
    "iotdefender_detect_transaction_seconds",
    "Seconds of one committed transaction storing and evaluating device reports (the commit included)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
TRANSACTION_REPORTS = Histogram(
    "iotdefender_detect_transaction_reports", "Device reports in one committed transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))

#: Told (seconds, reports) of each committed transaction.
TransactionObserver = Callable[[float, int], None]


def observe(seconds: float, reports: int) -> None:
    """The observer of a store in the process that serves ``/metrics``."""
    TRANSACTION_SECONDS.observe(seconds)
    TRANSACTION_REPORTS.observe(reports)


class Timings:
    """The observer of a store in a child process: keeps what it is told until ``take``."""

    def __init__(self) -> None:
        self._kept: list[tuple[float, int]] = []

    def __call__(self, seconds: float, reports: int) -> None:
        self._kept.append((seconds, reports))

    def take(self) -> list[tuple[float, int]]:
        kept, self._kept = self._kept, []
        return kept


@contextmanager
def timed(reports: int, observer: TransactionObserver) -> Iterator[None]:
    """Tell ``observer`` the block's seconds if it completes and ``reports`` is not 0."""
    started = time.perf_counter()
    yield
    if reports:
        observer(time.perf_counter() - started, reports)
