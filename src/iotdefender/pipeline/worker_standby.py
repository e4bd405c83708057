"""A detection worker started before the service has imported itself, told its config later.

Why: the worker is a spawned interpreter that imports the storage and detection modules (~0.9 s on
an idle core), and the service's own imports take ~1.5 s before it could start one. Started first,
the two import side by side, so a start of ``serve`` waits for the longer of the two instead of
both (bench/service_start.py measures it). The standby imports those modules and then waits on its
pipe for the ``WorkerConfig``; after that it is exactly the worker ``WorkerBatchStore`` would have
started. This module stays light on purpose: the parent imports it before anything heavy.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess


def standby_main(pipe: Pipe) -> None:
    """The child: die with the parent's thread, import the worker, wait for its config, run it."""
    import signal

    from iotdefender.child_process import die_with_parent

    die_with_parent()
    # Ctrl-C reaches every process of the terminal's group; the parent decides (worker.py). SIGTERM
    # stays: multiprocessing stops an unused daemon child with it at the parent's exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from iotdefender.logging_setup import configure_logging  # noqa: F401  (imported now, used by the worker)
    from iotdefender.pipeline.worker import worker_main
    from iotdefender.store.database import create_engine  # noqa: F401  (the same)

    try:
        config = pipe.recv()
    except (EOFError, OSError):
        return  # the service never needed it (it failed to start, or stopped before storing)
    worker_main(pipe, config)


class WorkerStandby:
    """One spawned standby worker, handed to ``WorkerBatchStore`` for its first start.

    Spawn it from a thread that lives as long as the service (the main thread): the child's
    death signal follows the thread that started it (child_process.die_with_parent)."""

    def __init__(self, pipe: Pipe, process: BaseProcess) -> None:
        self._pipe = pipe
        self._process = process
        self._taken = False

    @classmethod
    def spawn(cls) -> WorkerStandby:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=True)
        process = context.Process(target=standby_main, args=(child,), name="iotdefender-detection", daemon=True)
        process.start()
        child.close()
        return cls(parent, process)

    def take(self, config: object) -> tuple[Pipe, BaseProcess]:
        """Send the child its config; from then on the caller owns the child and its pipe.

        Raises OSError or ValueError if the child is gone (then it is discarded here)."""
        self._taken = True
        try:
            self._pipe.send(config)
        except (OSError, ValueError):
            self._end()
            raise
        return self._pipe, self._process

    def discard(self) -> None:
        """Not needed after all (a failed start, or no store was opened): end the child."""
        if not self._taken:
            self._taken = True
            self._end()

    def _end(self) -> None:
        # Killed, not asked: it holds nothing yet (no database connection, no state), and it may
        # still be importing, which an exit on a failed start should not wait for.
        self._pipe.close()
        self._process.kill()
        self._process.join()
