"""The ownership loops' cadence: a renewal round starts a tick after the previous one started, so a
round that waited out its request timeouts (a bucket electing a leader) is followed by the next at
once; a rebalance round still rests a tick after it ends."""

from __future__ import annotations

import asyncio
import statistics

from iotdefender.cluster.ownership import Ownership, members_listed
from iotdefender.cluster.topology import Topology


async def _nothing(*args: object) -> None:
    return None


def _round_starts(from_start: bool, tick: float) -> list[float]:
    """The gaps between the starts of rounds that each last a tick (every request unanswered)."""
    ownership = Ownership(None, Topology(), "node-a", _nothing, _nothing, tick_s=tick)  # type: ignore[arg-type]
    started: list[float] = []

    async def unanswered_round() -> None:  # every request of the round waits out its timeout
        started.append(asyncio.get_running_loop().time())
        await asyncio.sleep(tick)

    async def go() -> None:
        task = asyncio.create_task(ownership._every(unanswered_round, from_start=from_start))
        await asyncio.sleep(tick * 7.5)
        task.cancel()

    asyncio.run(go())
    return [b - a for a, b in zip(started, started[1:])]


def test_a_renewal_round_that_lasts_a_tick_is_followed_by_the_next_at_once_not_a_tick_later():
    tick = 0.4
    gaps = _round_starts(from_start=True, tick=tick)
    # Counting the tick from the round's end: 0.8 s between rounds (a lease confirmed up to 2 s
    # after the bucket answers again, with the 1 s tick); from its start: 0.4 s.
    assert len(gaps) >= 4 and statistics.median(gaps) < 1.5 * tick, gaps


def test_a_rebalance_round_rests_a_tick_after_it_ends():
    tick = 0.4
    gaps = _round_starts(from_start=False, tick=tick)
    assert len(gaps) >= 2 and min(gaps) >= 2 * tick - 0.02, gaps


def test_a_member_missing_from_one_listing_is_kept_if_the_next_lists_it():
    """A listing that misses a live member (a late entry) is not taken for the members: it is
    listed again, and a member is dropped only when both listings miss it."""
    listings = [{"node-a": b"", "node-b": b""}, {"node-a": b"", "node-b": b"", "node-old": b"{}"}]
    calls: list[int] = []

    async def list_once() -> dict[str, bytes]:
        calls.append(1)
        return listings[len(calls) - 1]

    entries = asyncio.run(members_listed(list_once, ["node-b", "node-old"]))
    assert entries == {"node-a": b"", "node-b": b"", "node-old": b"{}"} and len(calls) == 2

    calls.clear()
    listings = [{"node-a": b""}, {"node-a": b""}]  # node-old left: both listings miss it
    assert asyncio.run(members_listed(list_once, ["node-old"])) == {"node-a": b""} and len(calls) == 2

    calls.clear()
    listings = [{"node-a": b"", "node-old": b""}]  # nobody missing: one listing
    assert asyncio.run(members_listed(list_once, ["node-old"])) == {"node-a": b"", "node-old": b""}
    assert len(calls) == 1
