"""How many datapoints of one metric a backtest reads at once, and the refusal past it.

A backtest's fast path (and the console builder's preview) reads every datapoint of a behavior's
metric in the range into memory, with its arrays, sorts and sweeps: about 120 bytes a datapoint
(``bench/backtest.py``: 10,000 devices over 7 days, 20.2 million datapoints a metric, peaked at
2.4 GB). At 100,000 devices a week is 200 million datapoints, some 24 GB, in the service process:
a click in the console ended the whole service, detection included, when the machine ran out of
memory. A request whose range holds more than the budget is refused at once with
InvalidRequestException and what to change, before anything is read. The budget is a quarter of
the machine's memory by default (``serve --backtest-max-datapoints``; 0: no bound). Behaviors
replayed report by report (the slow path: statistical and ML ones) stream the range and are not
bounded by it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from sqlalchemy.engine import Connection

from iotdefender.contract.errors import invalid_request
from iotdefender.store import history

BYTES_PER_DATAPOINT = 120
MEMORY_SHARE = 4  # the budget is this fraction of the machine's memory


def default_max_datapoints() -> int:
    """A quarter of the machine's memory, at ``BYTES_PER_DATAPOINT``."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # not a POSIX system: 4 GiB assumed
        memory = 4 * 2**30
    return max(1_000_000, memory // MEMORY_SHARE // BYTES_PER_DATAPOINT)


def check_readable(conn: Connection, series: Iterable[str], start: float, end: float, limit: int) -> None:
    """Refuse a range in which any of ``series`` holds more than ``limit`` datapoints (0: no bound)."""
    if limit <= 0:
        return
    for name in dict.fromkeys(series):
        found = history.datapoints_between(conn, name, start, end)
        if found > limit:
            share = limit / found
            raise invalid_request(
                f"The range holds about {found:,} datapoints of {name}, more than a backtest reads at once "
                f"({limit:,}: --backtest-max-datapoints, by default a quarter of the machine's memory at "
                f"{BYTES_PER_DATAPOINT} bytes a datapoint). Shorten the range to about {share:.0%} of it.")
