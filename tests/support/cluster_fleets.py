"""Two ``serve`` nodes of one cluster, each with a fleet of real MQTT devices reporting under load
(the cluster e2e tests that take the database away from under them)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.support.fleet import Fleet, per_device, prepare
from tests.support.processes import ServiceProcess, wait_for


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
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ServiceProcess.start, (a, b)))
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
