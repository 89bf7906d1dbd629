"""Child processes that never outlive the process that started them.

A fuzz worker or a kernel worker left running after its parent died (kill -9,
the OOM killer) keeps loading programs into the kernel to the end of its
budget with nobody to read its results. Linux kills such a child for us
(``PR_SET_PDEATHSIG``); where that is not available, or the parent died before
the child asked, ``parent_alive`` is the check a child's loop makes.
"""

from __future__ import annotations

import ctypes
import os
import signal

__all__ = ["die_with_parent", "parent_alive", "ignore_interrupts", "Interrupted"]

_PR_SET_PDEATHSIG = 1


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying what a verb has to say so far (its summary), which
    the command line prints before it exits 130."""

    def __init__(self, summary: str = ""):
        super().__init__(summary)
        self.summary = summary


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when ``parent`` (the pid
    that started it) dies; if it already has, exit now. False where
    ``prctl`` is unavailable: the caller's loop must then check
    ``parent_alive``."""
    ok = False
    try:
        # the running program's own symbols include libc's (find_library
        # would run ldconfig in a subprocess for every worker)
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux, or no libc to ask
        ok = False
    # the parent may have died before the request: then we were already
    # re-parented and no signal will come
    if not parent_alive(parent):
        os._exit(1)
    return ok


def parent_alive(parent: int) -> bool:
    """Whether ``parent`` is still this process's parent."""
    return os.getppid() == parent


def ignore_interrupts() -> None:
    """Leave Ctrl-C to the parent: it stops the children and prints the summary
    (a worker's own ``KeyboardInterrupt`` would only print a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
