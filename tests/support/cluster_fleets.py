"""Two ``serve`` nodes of one cluster, each with a fleet of real MQTT devices reporting under load
(the cluster e2e tests that take the database away from under them)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.fleet import Fleet, exact_books, per_device, prepare
from tests.support.processes import ServiceProcess, start_together, wait_for


@contextlib.contextmanager
def two_nodes_under_load(database_url: str, args: list[str], root: Path, prefix: str, devices: int,
                         interval: float, accepted: int = 5
                         ) -> Iterator[tuple[ServiceProcess, ServiceProcess, Any, list[Fleet]]]:
    """Nodes ``a`` and ``b`` (``serve`` with ``args``), the fleets' profile, and ``devices`` devices
    on each node reporting every ``interval`` s, once each device had ``accepted`` reports
    accepted; the fleets are closed and the nodes stopped on the way out."""
    a = ServiceProcess(data_dir=root / "a", database_url=database_url, extra_args=args)
    b = ServiceProcess(data_dir=root / "b", database_url=database_url, extra_args=args)
    fleets: list[Fleet] = []
    try:
        start_together(a, b)
        iot = prepare(a.client())
        fleets = [Fleet(node.mqtt_port, [f"{prefix}{name}-{n}" for n in range(devices)], interval)
                  for name, node in (("a", a), ("b", b))]
        for fleet in fleets:
            fleet.start()
        wait_for(lambda: min(per_device(fleets).values()) >= accepted, 20, "every device accepted under load")
        yield a, b, iot, fleets
    finally:
        for fleet in fleets:
            fleet.pause()
            fleet.close()
        b.stop()
        a.stop()


def back_after(iot: Any, a: ServiceProcess, b: ServiceProcess, fleets: list[Fleet], since: float,
               what: str, timeout: float = 30) -> tuple[float, list[dict[str, Any]]]:
    """Once the database is back (at ``since``, monotonic): the seconds until every device had 3
    more reports accepted, after both nodes answer /healthz 200 again, and the fleets' books
    (``exact_books``: nothing lost or duplicated)."""
    before = per_device(fleets)
    wait_for(lambda: all(n >= before[thing] + 3 for thing, n in per_device(fleets).items()), timeout,
             f"every device accepted again {what}")
    seconds = time.monotonic() - since
    wait_for(lambda: a.healthz() == 200 and b.healthz() == 200, 20, "/healthz 200 on both nodes again")
    return seconds, exact_books(iot, fleets)
