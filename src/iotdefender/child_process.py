"""Children that must not outlive the service (the detection worker, the Mosquitto broker)."""

from __future__ import annotations

import ctypes
import signal
import sys


def die_with_parent(death_signal: int = signal.SIGKILL) -> None:
    """Linux: send this process ``death_signal`` when its parent dies (prctl PR_SET_PDEATHSIG = 1).

    Caveat: "parent" is the *thread* that forked the child; start children from a thread that
    lives as long as the service (the event loop's, or a dedicated one), never from a pool thread.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, death_signal, 0, 0, 0)
        except (OSError, AttributeError):
            pass


#: The detection worker's name in ``ps``, ``top`` and ``/proc/PID/comm`` (Linux keeps 15 bytes).
#: A forked worker has the service's command line, a spawned one Python's multiprocessing line;
#: this tells an operator (and the tests) which process is the worker either way.
DETECTION_WORKER_NAME = "iotd-detection"


def name_this_process(name: str) -> None:
    """Linux: set this process's name as ``ps -o comm`` and ``top`` show it (prctl PR_SET_NAME = 15)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
        except (OSError, AttributeError):
            pass
