"""When a cluster's cloud-side window is complete: each publisher's word that it handed its parts over.

A detect node closes a partition's window from the parts the broker nodes published to it
(cloud/cluster_windows.py). A part that never came looked like an idle device: a broker node that
could not publish its parts (a NATS server killed under it, an election) gave every one of its
devices a datapoint of 0 for that window, which can raise a false "too few" alarm or clear a
flood alarm (an operator's trial: one window of 0 for 100 devices).

So every publisher of parts (a broker node, an ``api`` node's event intake, the reader of an
external NATS broker's events) ends each window in every partition with an ``End``: "I have
published every part I had, for this partition, of the windows ``since`` .. ``window``" (and
"I began in ``began``": it has nothing of the windows before, it was not there). It is
published after those parts are stored, and a partition is read in order, so a detect node that
has read a publisher's end has read its parts of those windows. A publisher that lost a part (or
could not publish an end) starts a new run after that window: its next end's ``since`` says which
windows it does not vouch for. A publisher that stops gracefully says so (``last``).

A partition's window is then, for its detect node:

- **complete** when every *expected* publisher vouches for it: one that vouched for a window at
  most ``horizon`` windows before it and did not say it stopped. The devices without a part get 0,
  as on one box.
- **incomplete** when an expected publisher says it lost the window, or has not vouched for it
  ``wait_s`` after the window was due (killed, cut off from NATS for longer than its retries):
  only the devices with parts get a datapoint. A device that may have sent its messages through
  the missing publisher gets no datapoint rather than a wrong 0 (a missing datapoint raises and
  clears nothing), as AWS's own cloud-side metrics have gaps when a device is not seen.
- **waiting** otherwise: closed when the ends come, or at ``wait_s``.

A publisher that was never heard from is never expected: a node of a release before the ends
(it sends none; the window closes ``grace`` after its end as before), and one that starts, until
its first end. The ends are kept in PostgreSQL with the parts (cloud/cluster_parts.py), so a
detect node that takes a partition over knows who to wait for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class End:
    """A publisher (``node``) that began in window ``began`` has published its parts of the windows
    ``since`` .. ``window`` in a partition (``since > window``: none of them: it lost ``window``);
    ``last``: it publishes no window after ``window`` (it stopped); ``hosts``: the connections it
    observes are to its own broker, and end with it (a broker node's embedded Mosquitto; not an
    ``api`` node's intake of an external broker's events, whose devices stay connected there)."""

    node: str
    began: int
    since: int
    window: int
    last: bool = False
    hosts: bool = False


class Verdict(Enum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    WAIT = "wait"


def horizon_for(wait_s: float, window_s: float) -> int:
    """How many windows a publisher stays expected after its last end: long enough that one slower
    than the wait is not forgotten, one window at least (the one it was killed in)."""
    return max(1, math.ceil(wait_s / window_s))


class WindowEnds:
    """The latest ``End`` of each publisher in each partition held, and what they say of a window."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self._ends: dict[int, dict[str, End]] = {}

    def record(self, partition: int, end: End) -> None:
        """A publisher's end, read from the partition (an older one than what is known changes nothing)."""
        ends = self._ends.setdefault(partition, {})
        known = ends.get(end.node)
        if known is None or end.window >= known.window:
            ends[end.node] = end

    def replace(self, partition: int, ends: Iterable[End]) -> None:
        """The partition's ends as loaded (a take-over)."""
        self._ends[partition] = {}
        for end in ends:
            self.record(partition, end)

    def forget(self, partition: int) -> None:
        self._ends.pop(partition, None)

    def _standing(self, end: End, window: int) -> Verdict:
        """What one publisher's end says of ``window``: vouched for or not expected (COMPLETE), lost
        (INCOMPLETE) or awaited (WAIT)."""
        if end.window >= window:
            # Before it began it had nothing to lose; after, a window before its run is one it lost.
            return Verdict.COMPLETE if window < end.began or end.since <= window else Verdict.INCOMPLETE
        if end.last or window - end.window > self.horizon:
            return Verdict.COMPLETE  # it stopped, or has been silent too long to wait for
        return Verdict.WAIT

    def verdict(self, partition: int, window: int, waited_out: bool) -> Verdict:
        """What the ends say of the partition's ``window``; ``waited_out``: its wait is over."""
        standings = {self._standing(end, window) for end in self._ends.get(partition, {}).values()}
        if Verdict.INCOMPLETE in standings or (Verdict.WAIT in standings and waited_out):
            return Verdict.INCOMPLETE
        return Verdict.WAIT if Verdict.WAIT in standings else Verdict.COMPLETE

    def short(self, partition: int, window: int) -> list[str]:
        """The publishers that lost ``window`` or have not vouched for it yet (for the logs)."""
        return sorted(end.node for end in self._ends.get(partition, {}).values()
                      if self._standing(end, window) is not Verdict.COMPLETE)

    def forgettable_before(self, window: int) -> int:
        """Ends older than this window expect nothing of ``window`` or later: deletable."""
        return window - self.horizon

    def gone(self, partition: int, window: int) -> list[End]:
        """The publishers ``prune(partition, window)`` forgets that went silent without saying they
        stopped and whose devices were connected to them (``hosts``): killed, most likely, and
        every connection they had ended with them. (One cut off from NATS for that long comes back
        with its devices' traffic, which says they are connected: ``WindowCollector``.)"""
        before = self.forgettable_before(window)
        # A copy first: read in the closing thread while the event loop records the ends it reads.
        return [end for end in list(self._ends.get(partition, {}).values())
                if end.window < before and end.hosts and not end.last]

    def latest(self, partition: int, node: str) -> End | None:
        """``node``'s latest end in the partition (None: none, or forgotten by ``prune``)."""
        return self._ends.get(partition, {}).get(node)

    def prune(self, partition: int, window: int) -> None:
        """Forget the ends that expect nothing of ``window`` or later (publishers gone: a
        restarted node is a new publisher)."""
        before = self.forgettable_before(window)
        ends = self._ends.get(partition, {})
        for node in [node for node, end in list(ends.items()) if end.window < before]:  # (as ``gone``)
            ends.pop(node, None)
