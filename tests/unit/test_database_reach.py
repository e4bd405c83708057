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


def test_it_answers_from_the_latest_probe_and_is_steady_only_after_answers_in_a_row() -> None:
    clock = Clock()
    reach = DatabaseReach(lambda: True, grace_s=15.0, clock=clock, steady_s=5.0)
    assert reach.answers() and not reach.steady()  # started on it; nothing probed yet
    reach.observe(True)
    clock.now += 4.9
    reach.observe(True)
    assert reach.answers() and not reach.steady()
    clock.now += 0.1
    assert reach.steady()
    reach.observe(False)  # one failed probe: it neither answers nor is steady
    assert not reach.answers() and not reach.steady()
    clock.now += 20.0
    assert reach.cut_off()
    reach.observe(True)  # back: it answers at once, and is steady only 5 s later
    assert reach.answers() and not reach.cut_off() and not reach.steady()
    clock.now += 5.0
    assert reach.steady()
