"""Group commit: calls that arrive while a batch of them runs go together in the next batch.

A detect node acquires its share of the partitions, or re-creates the leases that expired during a
leases bucket's election, in one round: dozens of calls at once, each of which needs a transaction
behind the detection lock. One transaction each cost a commit and a turn of the lock apiece (fence
moves: ~1.5 s for 34 partitions at load 12; a take-over that refills the windows reads the
trailing hour of datapoints, once per partition). ``GroupCommit`` runs the first call at once and
gathers the calls that arrive meanwhile for the next run, so a round costs one or two runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """``await group(item)`` runs ``run_many`` (blocking, on a thread) over the items waiting then.

    ``run_many`` returns one result per item, in order, an exception among them failing only its
    own caller; if it raises, every caller of that run gets the exception."""

    def __init__(self, run_many: Callable[[Sequence[Item]], Sequence[Result | Exception]], name: str) -> None:
        self._run_many = run_many
        self._name = name
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name=self._name)
        return await future

    async def _run(self) -> None:
        while self._waiting:
            taken, self._waiting = self._waiting, []
            try:
                results = await asyncio.to_thread(self._run_many, [item for item, _ in taken])
            except Exception as error:
                results = [error] * len(taken)
            for (_, future), result in zip(taken, results):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
