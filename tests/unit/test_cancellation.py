"""cancel_and_wait ends a loop whose first cancellation Python 3.11's asyncio.wait_for swallowed, and
wait_event, which waits between a loop's rounds, does not swallow one."""

from __future__ import annotations

import asyncio
import sys

from iotdefender.cancellation import cancel_and_wait, wait_event


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


def test_a_loop_waiting_through_wait_event_ends_on_one_cancellation_as_the_event_is_set() -> None:
    """The alert deliverer's loop, through wait_for on 3.11, went on after ``task.cancel()`` when
    its event was set in the same turn (and ``await task`` hung: a 300 s test timeout)."""
    async def go() -> tuple[bool, list[int]]:
        event = asyncio.Event()
        rounds: list[int] = []

        async def loop() -> None:
            while len(rounds) < 3:
                await wait_event(event, 10)
                rounds.append(1)
                event.clear()

        task = asyncio.create_task(loop())
        await asyncio.sleep(0)
        event.set()
        task.cancel()
        await asyncio.wait([task], timeout=1)
        ended = task.cancelled()
        await cancel_and_wait([task])
        return ended, rounds

    assert asyncio.run(go()) == (True, [])


def test_wait_event_says_whether_the_event_was_set() -> None:
    async def go() -> tuple[bool, bool]:
        event = asyncio.Event()
        late = await wait_event(event, 0.01)
        asyncio.get_running_loop().call_later(0.01, event.set)
        return late, await wait_event(event, 5)

    assert asyncio.run(go()) == (False, True)
