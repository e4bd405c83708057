"""The port ingest commits its accepted reports through: "commit these reports -> what became of each".

Ingest parses, orders and throttles; what "committed" means depends on where detection runs:

- on one box (``LocalCommitter``), the batch is a transaction of the ``BatchStore`` (in this
  process or the detection worker), split by ``store_isolating`` so one bad report cannot fail the
  others;
- in cluster mode (``cluster_commit.JetStreamCommitter``), each report is published to
  its thing's partition and counts as committed once the partition's detect node says so.

Either way the answer is an ``Isolated`` by index in the batch: ``stored`` are answered
``accepted``; a ``failed`` entry that is a ``ReportRejected`` is answered with its own code, any
other exception ``InternalError``; ``unavailable`` ones ``ServiceUnavailable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio.to_thread

from iotdefender.ingest.report import ParsedReport
from iotdefender.pipeline.batch_isolation import Isolated, store_isolating
from iotdefender.pipeline.batch_store import BATCH_MAX, BatchStore


@dataclass
class AcceptedReport:
    """A report the parser and the order check accepted, waiting to be committed and answered."""

    thing: str
    encoding: str
    report: ParsedReport
    received_at: float
    arrived: float  # when the broker received it (its stamp if it gives one): the answer's latency starts here


class ReportCommitter(Protocol):
    # How many batches ingest may have in flight at once (a thing is never in two of them).
    pipeline_depth: int
    # The most reports ingest puts in one batch. A batch is answered when all of its reports are
    # settled, so a committer whose reports settle one by one (cluster mode) wants small batches.
    batch_max: int
    # Whether a commit's outcome tells this process's database is reachable (the single box's own
    # transaction) or not (cluster mode: another node committed; a broker node cut off from
    # PostgreSQL must not call its database available because a detect node stored a report).
    commits_here: bool

    async def commit(self, batch: Sequence[AcceptedReport]) -> Isolated[Any]:
        """Commit the batch; what became of each report, by index. Raises only on a defect."""
        ...


class LocalCommitter:
    """The single box: the batch through ``BatchStore.store_batch`` in as few transactions as its
    failures allow, in a worker thread (the store blocks)."""

    def __init__(self, store: BatchStore) -> None:
        self._store = store
        self.pipeline_depth = store.pipeline_depth
        self.batch_max = BATCH_MAX  # one transaction per batch: the bigger, the fewer commits
        self.commits_here = True

    async def commit(self, batch: Sequence[AcceptedReport]) -> Isolated[Any]:
        return await anyio.to_thread.run_sync(self._commit, batch)

    def _commit(self, batch: Sequence[AcceptedReport]) -> Isolated[Any]:
        return store_isolating(self._store.store_batch,
                               [(i.thing, i.report.datapoints, i.received_at, i.report.report_id) for i in batch])


def committer_of(reports: BatchStore | ReportCommitter) -> ReportCommitter:
    """A committer as is; a ``BatchStore`` behind a ``LocalCommitter``."""
    return reports if hasattr(reports, "commit") else LocalCommitter(reports)  # type: ignore[arg-type,return-value]
