"""Store a batch so that one bad item cannot fail the others.

A batch is one transaction; before this, a single item the store could not take (a count past
64 bits that the driver refused, say) rolled back the whole batch and every other device's
report in it went unanswered and unstored. When a batch fails for a reason other than an outage,
it is split in halves and each half is retried, recursively, until the failing items stand
alone: they are set aside with their error and everything else is stored. A batch of n items
with k culprits costs O(k log n) extra transactions; a clean batch costs nothing extra.

An outage (``is_unavailable``) is not an item's fault: bisecting it would only repeat the
failure 2n times, so the items not yet stored are reported as unavailable at once.

A ``fatal`` error (cluster mode's ``Fenced``: this node may no longer store anything for the
batch) is no item's fault either, and not a reason to answer anyone: it is raised to the caller
as it happens, with what was stored before it committed (the caller knows how to recognise that).

``together_or_apart`` is the same idea one level up, for several partitions' batches waiting
together (cluster mode's report batches and window parts): one transaction for all, each on its
own if that fails for a reason of its own, every one failed at once on an outage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from prometheus_client import Counter

from iotdefender.store.availability import StoreUnavailable, is_unavailable

Item = TypeVar("Item")
Result = TypeVar("Result")

ISOLATED = Counter("iotdefender_batch_items_isolated",
                   "Batch items set aside because storing them failed their batch", ["source"])
RETRIES = Counter("iotdefender_batch_isolation_retries",
                  "Extra transactions run to isolate the items that failed a batch", ["source"])


@dataclass
class Isolated(Generic[Result]):
    """What became of each item, by its index in the batch."""

    stored: list[int] = field(default_factory=list)
    failed: dict[int, BaseException] = field(default_factory=dict)  # the culprits
    unavailable: list[int] = field(default_factory=list)  # not stored: the database is unreachable
    outage: BaseException | None = None
    results: list[Result] = field(default_factory=list)  # one per successful transaction


def store_isolating(store: Callable[[Sequence[Item]], Result], items: Sequence[Item],
                    source: str = "ingest", fatal: tuple[type[BaseException], ...] = ()) -> Isolated[Result]:
    """Store ``items`` in as few transactions as the failures allow (see the module docstring)."""
    outcome: Isolated[Result] = Isolated()
    pending: list[list[int]] = [list(range(len(items)))]  # a stack of index ranges, first half on top
    first = True
    while pending:
        indices = pending.pop()
        if outcome.outage is not None:
            outcome.unavailable.extend(indices)
            continue
        if not first:
            RETRIES.labels(source).inc()
        first = False
        try:
            outcome.results.append(store([items[i] for i in indices]))
        except fatal:
            raise
        except Exception as error:
            if is_unavailable(error):
                outcome.outage = error
                outcome.unavailable.extend(indices)
            elif len(indices) == 1:
                outcome.failed[indices[0]] = error
                ISOLATED.labels(source).inc()
            else:
                middle = len(indices) // 2
                pending += [indices[middle:], indices[:middle]]
            continue
        outcome.stored.extend(indices)
    return outcome


def together_or_apart(items: Sequence[Item],
                      together: Callable[[Sequence[Item]], Sequence[Result | Exception]] | None,
                      apart: Callable[[Item], Result],
                      on_apart: Callable[[Exception], None] = lambda error: None,
                      most: int | None = None, size: Callable[[Item], int] = lambda item: 1
                      ) -> list[Result | Exception]:
    """Each item's result, or the exception it fails with: the items in one transaction
    (``together``), and only if that fails for a reason of its own, each on its own (``apart``).

    Why one transaction: several partitions' small batches waiting together pay one commit
    instead of one each. Why apart after a failure: one item's fault (a fenced partition, a row
    the database refuses) then fails only that item. Not after an outage (``is_unavailable``):
    that is no item's fault, and trying each apart would cost every item one more connection
    timeout (with packets dropped, 4 batches held a node's partitions 25 s before it could let
    them go), so every item fails at once, as does each item still waiting after an outage shows
    while they are tried apart. Each item gets its own ``StoreUnavailable`` (its waiter raises it).
    ``together`` None: the items cannot share a transaction; ``on_apart`` hears why they are tried
    apart. ``most``: the items are cut, in order, into runs of at most that ``size`` (an item
    larger stands alone), one transaction each, when one long transaction would hold what others
    wait for.
    """
    results: list[Result | Exception] = []
    outage: BaseException | None = None
    for run in _runs(items, most, size):
        if outage is not None:
            results += [StoreUnavailable.caused_by(outage) for _ in run]
            continue
        done = _together_or_apart(run, together, apart, on_apart)
        results += done
        failed = next((r for r in done if isinstance(r, Exception) and is_unavailable(r)), None)
        outage = _outage_of(failed) if failed is not None else None
    return results


def _runs(items: Sequence[Item], most: int | None, size: Callable[[Item], int]) -> list[Sequence[Item]]:
    if most is None:
        return [items]
    runs: list[Sequence[Item]] = []
    start = held = 0
    for index, item in enumerate(items):
        weight = size(item)
        if index > start and held + weight > most:
            runs.append(items[start:index])
            start, held = index, 0
        held += weight
    if start < len(items):
        runs.append(items[start:])
    return runs


def _together_or_apart(items: Sequence[Item],
                       together: Callable[[Sequence[Item]], Sequence[Result | Exception]] | None,
                       apart: Callable[[Item], Result],
                       on_apart: Callable[[Exception], None]) -> list[Result | Exception]:
    if together is not None and len(items) > 1:
        try:
            return list(together(items))
        except Exception as error:
            if is_unavailable(error):
                return [StoreUnavailable.caused_by(_outage_of(error)) for _ in items]
            on_apart(error)
    results: list[Result | Exception] = []
    outage: BaseException | None = None
    for item in items:
        if outage is not None:
            results.append(StoreUnavailable.caused_by(outage))
            continue
        try:
            results.append(apart(item))
        except Exception as error:
            if is_unavailable(error):
                outage = _outage_of(error)
            results.append(error)
    return results


def _outage_of(error: BaseException) -> BaseException:
    """The database's own error behind a ``StoreUnavailable`` (or the error itself)."""
    return (error.__cause__ or error) if isinstance(error, StoreUnavailable) else error
