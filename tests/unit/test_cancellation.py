"""cancel_and_wait ends a loop whose first cancellation Python 3.11's asyncio.wait_for swallowed."""

from __future__ import annotations

import asyncio
import sys

from iotdefender.cancellation import cancel_and_wait


async def _loop_through_wait_for(arrived: list[asyncio.Future[int]], rounds: list[int]) -> None:
    """A background loop like ownership's: each round awaits an operation through wait_for."""
    loop = asyncio.get_running_loop()
    while True:
        operation: asyncio.Future[int] = loop.create_future()
        arrived.append(operation)
        rounds.append(await asyncio.wait_for(operation, 10))


def test_a_loop_whose_cancellation_was_swallowed_is_cancelled_again_and_ends() -> None:
    async def go() -> tuple[bool, list[int]]:
        arrived: list[asyncio.Future[int]] = []
        rounds: list[int] = []
        task = asyncio.create_task(_loop_through_wait_for(arrived, rounds))
        await asyncio.sleep(0)
        # The operation completes and the task is cancelled in the same turn of the event loop.
        arrived[-1].set_result(1)
        task.cancel()
        await asyncio.sleep(0.1)
        swallowed = not task.done()
        await asyncio.wait_for(cancel_and_wait([task, None]), 5)
        return swallowed, rounds

    swallowed, rounds = asyncio.run(go())
    if sys.version_info < (3, 12):  # python/cpython#86296: the first cancellation is lost there
        assert swallowed and rounds == [1]  # it went on to a second round: one cancel() is not enough


def test_tasks_that_end_on_the_first_cancellation_or_have_ended_are_waited_for() -> None:
    async def go() -> list[bool]:
        sleeper = asyncio.create_task(asyncio.sleep(60))
        finished = asyncio.create_task(asyncio.sleep(0, result=None))
        await asyncio.sleep(0.01)
        await cancel_and_wait([sleeper, finished])
        return [sleeper.cancelled(), finished.done() and not finished.cancelled()]

    assert asyncio.run(go()) == [True, True]
