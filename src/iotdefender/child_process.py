"""Children that must not outlive the service (the detection worker, the Mosquitto broker)."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def _prctl(option: int, argument: int | ctypes.c_char_p) -> None:
    """Linux's ``prctl`` for this process; nothing elsewhere, or if libc will not say."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(option, argument, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def die_with_parent(death_signal: int = signal.SIGKILL) -> None:
    """Linux: send this process ``death_signal`` when its parent dies (PR_SET_PDEATHSIG).

    Caveat: "parent" is the *thread* that forked the child; start children from a thread that
    lives as long as the service (the event loop's, or a dedicated one), never from a pool thread.
    """
    _prctl(PR_SET_PDEATHSIG, death_signal)


#: The detection worker's name in ``ps``, ``top`` and ``/proc/PID/comm`` (Linux keeps 15 bytes).
#: A forked worker has the service's command line, a spawned one Python's multiprocessing line;
#: this tells an operator (and the tests) which process is the worker either way.
DETECTION_WORKER_NAME = "iotd-detection"


def name_this_process(name: str) -> None:
    """Linux: set this process's name as ``ps -o comm`` and ``top`` show it (PR_SET_NAME)."""
    _prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))
