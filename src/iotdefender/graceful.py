"""Stopping on SIGTERM as on Ctrl-C: the service's whole shutdown runs, then the process exits 0.

systemd, ``docker stop`` and Kubernetes stop a service with SIGTERM. uvicorn handles SIGINT and
SIGTERM while it serves and, once it has shut down, raises the same signal again so that its
default action happens (``uvicorn.Server.capture_signals``, uvicorn 0.54). For SIGTERM that ended
the process before the service's own shutdown had run — a cluster node left without handing its
partitions over (the others waited for its leases to expire), ingest and the broker were not
closed; for SIGINT asyncio's runner cancelled the main task in the middle of that shutdown.

Here the event loop handles both signals for as long as the server runs and while the service
shuts down: the first asks uvicorn to stop (the code after ``serve()`` then runs to its end), the
second stops waiting for open connections, and from the third on each signal has its default
action again, so a shutdown that hangs can still be ended from the terminal or by the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import structlog
import uvicorn

log = structlog.get_logger("iotdefender")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulServer(uvicorn.Server):
    """uvicorn's server, with the stop signals handled by the event loop instead (module docstring)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        received: list[signal.Signals] = []

        def on_signal(sig: signal.Signals) -> None:
            received.append(sig)
            if len(received) == 1:
                log.info("stopping", signal=sig.name)
                self.should_exit = True
            else:
                log.warning("stopping_now", signal=sig.name)
                self.force_exit = True
                for stop_signal in STOP_SIGNALS:  # the next one has its default action
                    loop.remove_signal_handler(stop_signal)

        for stop_signal in STOP_SIGNALS:
            loop.add_signal_handler(stop_signal, on_signal, stop_signal)
        yield
