"""Child processes that die with the server, even when the server is killed with SIGKILL.

A server killed with SIGKILL runs no cleanup: its process-pool workers (the G-code analyser
kept 1.2 GB) and the tools it started would live on as orphans. Two mechanisms stop that:

- `die_with_parent` is a process-pool initializer: a daemon thread in the worker waits on a
  pidfd of the parent (Linux 5.3+; else it polls the parent pid once a second) and ends the
  worker the moment the parent is gone. A pidfd rather than PR_SET_PDEATHSIG because the
  death signal fires when the *thread* that started the worker exits, and pool workers may
  be started from short-lived threads.
- `set_parent_death_signal` is a `preexec_fn` for tools started from the event loop's thread
  (which lives as long as the server): the kernel sends SIGKILL when the server dies.

multiprocessing's resource tracker needs neither: it exits when the last process holding
its pipe (the server and the pool workers) is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
import time
from typing import Any

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """End this process when `parent_pid` exits (a process-pool initializer)."""
    if os.getppid() != parent_pid:  # the parent died before the worker got here
        os._exit(1)
    thread = threading.Thread(
        target=_watch, args=(parent_pid,), name="parent-watchdog", daemon=True
    )
    thread.start()


def _watch(parent_pid: int) -> None:
    try:
        fd = os.pidfd_open(parent_pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        # A pidfd becomes readable when the process exits; no polling, no delay.
        with contextlib.suppress(OSError):
            select.select([fd], [], [])
    else:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
    os._exit(1)  # no cleanup: the parent that would have wanted it is gone


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once, in the parent: the preexec_fn runs between fork and exec, where loading a
# library could deadlock on a lock another thread held at the fork.
_PRCTL = _load_prctl()


def set_parent_death_signal() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; a preexec_fn)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
