"""Resident memory and CPU time of process trees, split into broker processes and the rest (/proc).

The service's broker is a Mosquitto child of the service (or a separate Mosquitto with
``--mqtt-url``); splitting by executable name counts it as broker either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

BROKER_NAMES = frozenset({"mosquitto"})
DETECTION_WORKER = "iotd-detection"  # iotdefender.child_process.DETECTION_WORKER_NAME


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


def split(pids: list[int], measure: Callable[[int], float]) -> dict[str, float]:
    """{'broker': total, 'service': total} of `measure` (rss_bytes, cpu_seconds) over the trees of `pids`."""
    return sides(by_role(pids, measure))


def sides(roles: dict[str, float]) -> dict[str, float]:
    """``by_role``'s totals as broker and service (the service's process and its worker)."""
    return {"broker": roles["broker"], "service": roles["main"] + roles["detection_worker"]}


def by_role(pids: list[int], measure: Callable[[int], float]) -> dict[str, float]:
    """`measure` over the trees of `pids` by role: 'broker' (Mosquitto), 'detection_worker' (the
    service's worker, by its process name) and 'main' (the rest: the service's own process, or a
    bare responder). Which process is busy says more than their sum: each is one core at most."""
    totals = {"main": 0.0, "detection_worker": 0.0, "broker": 0.0}
    for root in pids:
        for pid in tree(root):
            process = name(pid)
            role = "broker" if process in BROKER_NAMES else "detection_worker" if process == DETECTION_WORKER else "main"
            totals[role] += measure(pid)
    return totals


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

