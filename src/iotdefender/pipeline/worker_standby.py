"""A detection worker started before the service has imported itself, told its config later.

Why: the worker needs the storage and detection modules (~0.6 s of imports on an idle core), and
the service's own imports take ~1.4 s before it could start one. The command line starts this
standby first, so a start of ``serve`` waits for the longer of the two instead of both
(bench/service_start.py measures it). After the ``WorkerConfig`` arrives on its pipe it is exactly
the worker ``WorkerBatchStore`` would have started.

**Forked, not spawned, where it can be.** A spawned child is a new interpreter that imports those
modules again: ~0.6 s of CPU at every start, on top of the service's own, and a multiprocessing
resource tracker process beside it. Instead, ``start`` imports the worker's modules in this
process (the service imports them anyway) and forks: the child has them already. Forking is safe
only while this process is one thread with nothing open but its standard streams (a fork copies
no other thread, so a lock another thread held would stay held in the child forever): the command
line calls ``start`` before it configures logging or starts anything. Elsewhere (other threads
already running, as under a test runner, or not Linux) the standby is spawned as before. Workers
started later, after a crash, are always spawned: the service has threads by then.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess


def standby_main(pipe: Pipe, parent_end: Pipe | None = None) -> None:
    """The child: die with the parent's thread, import the worker, wait for its config, run it.

    ``parent_end``: the parent's end of the pipe, which a forked child holds a copy of. Closed here,
    or the child would never see the parent close it (the worker ends on that EOF)."""
    import signal

    from iotdefender.child_process import die_with_parent

    if parent_end is not None:
        parent_end.close()
    die_with_parent()
    # Ctrl-C reaches every process of the terminal's group; the parent decides (worker.py). SIGTERM
    # stays: multiprocessing stops an unused daemon child with it at the parent's exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _import_the_worker()
    from iotdefender.pipeline.worker import worker_main

    try:
        config = pipe.recv()
    except (EOFError, OSError):
        return  # the service never needed it (it failed to start, or stopped before storing)
    worker_main(pipe, config)


def _import_the_worker() -> None:
    """Import what the worker runs on (in the child when spawned, in the parent before a fork)."""
    from iotdefender.logging_setup import configure_logging  # noqa: F401  (used by the worker)
    from iotdefender.pipeline.worker import worker_main  # noqa: F401
    from iotdefender.store.database import create_engine  # noqa: F401  (the same)


def can_fork() -> bool:
    """Whether a fork here would be safe: Linux, and this process is its main thread alone."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


class WorkerStandby:
    """One standby worker, handed to ``WorkerBatchStore`` for its first start.

    Start it from a thread that lives as long as the service (the main thread): the child's
    death signal follows the thread that started it (child_process.die_with_parent)."""

    def __init__(self, pipe: Pipe, process: BaseProcess, forked: bool) -> None:
        self._pipe = pipe
        self._process = process
        self._taken = False
        self.forked = forked

    @classmethod
    def start(cls) -> WorkerStandby:
        """Fork the standby if ``can_fork``, after importing the worker's modules here; else spawn it."""
        if can_fork():
            _import_the_worker()  # the service imports them anyway
        forked = can_fork()  # checked again: an import that started a thread makes a fork unsafe
        context = multiprocessing.get_context("fork") if forked else multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=True)
        process = context.Process(target=standby_main, args=(child, parent if forked else None),
                                  name="iotdefender-detection", daemon=True)
        process.start()
        child.close()
        return cls(parent, process, forked)

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
