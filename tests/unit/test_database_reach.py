"""A detect node counts itself cut off from its database only after the whole grace (database_reach.py)."""

import asyncio

from iotdefender.cluster.database_reach import DatabaseReach


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cut_off_only_after_the_grace_and_not_once_it_answers() -> None:
    clock = Clock()
    reach = DatabaseReach(lambda: True, grace_s=15.0, clock=clock)
    reach.observe(False)
    clock.now += 14.9
    reach.observe(False)  # still the same outage: counted from its first failed probe
    assert not reach.cut_off()
    clock.now += 0.1
    assert reach.cut_off()
    reach.observe(True)
    assert not reach.cut_off()
    reach.observe(False)  # a new outage starts its own grace
    assert not reach.cut_off()


def test_a_probe_that_raises_counts_as_unreachable() -> None:
    clock = Clock()

    def probe() -> bool:
        raise RuntimeError("not an outage the probe knows")

    reach = DatabaseReach(probe, grace_s=0.0, interval_s=0.01, clock=clock)

    async def one_round() -> None:
        task = asyncio.create_task(reach.run())
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(one_round())
    assert reach.cut_off()
