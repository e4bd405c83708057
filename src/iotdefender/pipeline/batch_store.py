"""The batch unit of work: the port ingest and the cloud-side closer hand their batches to.

A ``BatchStore`` stores the retained datapoints and report states of a batch and runs detection
inside the same transaction, so an acknowledged datapoint, the events it caused, the alarm states
and the alert outbox rows commit together or not at all.

Implementations (cluster mode will add a third, a transport to the partition's owner):
- ``local_store.LocalBatchStore`` does it in the calling process (tests, tools,
  ``--detection-worker off``);
- ``worker_client.WorkerBatchStore`` does it in a child process (``worker.worker_main``), the
  default for ``serve``.

Cluster mode's detect node runs the same transaction (``local_store.store_reports``) for one
partition's deliveries in ``partition_store.PartitionBatchStore``; that is not a ``BatchStore``:
``cluster.node.DetectConsumer`` drives it, not ingest.

Either way, the events of a committed batch are handed to the ``EventListener`` it was built with,
in the process that serves ``/metrics`` (so counters are counted once, where they are scraped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from iotdefender.engine.evaluator import ViolationEvent

# The most items one ``store_batch`` is given: one transaction holds the detection worker for
# this long at most, so that device reports waiting behind it are answered promptly.
BATCH_MAX = 1000

# (thing, datapoints, time, report id): a device report, or a cloud-side window (report id None).
BatchItem = tuple[str, dict[str, dict[str, Any]], float, int | None]
EventSummary = tuple[str, str, str]  # (event type, profile, behavior): what the counters need
# Told of the events of every committed batch or sweep (counters, waking the alert loop).
EventListener = Callable[[list[EventSummary]], None]


def ignore_events(events: list[EventSummary]) -> None:
    """The listener of a store whose events are reported elsewhere (the worker's: its parent counts)."""


def summaries(events: Iterable[ViolationEvent]) -> list[EventSummary]:
    return [(e.event_type.value, e.profile_name, e.behavior.get("name", "")) for e in events]


class BatchStore(Protocol):
    # How many batches ingest may have in flight at once (calls from as many threads).
    pipeline_depth: int

    def store_batch(self, items: Sequence[BatchItem]) -> list[EventSummary]:
        """Store and evaluate the batch in one transaction; its events, once committed."""
        ...

    def sweep(self, now: float) -> list[EventSummary]:
        """Invalidate alarms whose device went silent or that nothing monitors any more."""
        ...

    def invalidate(self) -> None:
        """The control plane changed: forget what was cached of it."""
        ...

    def close(self) -> None: ...
