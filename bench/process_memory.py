"""Resident memory of a process tree, split into broker processes and the rest (read from /proc).

The service's broker may live in its own process (a Mosquitto child) or inside the service
(amqtt); splitting by executable name reports either honestly without knowing which one runs.
"""

from __future__ import annotations

from pathlib import Path

BROKER_NAMES = frozenset({"mosquitto"})


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants that are alive now."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                stack += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def split_rss(pids: list[int]) -> dict[str, int]:
    """{'broker': bytes, 'service': bytes} over the trees of `pids`."""
    totals = {"broker": 0, "service": 0}
    for root in pids:
        for pid in tree(root):
            totals["broker" if name(pid) in BROKER_NAMES else "service"] += rss_bytes(pid)
    return totals
