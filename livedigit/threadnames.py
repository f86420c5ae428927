"""The names the server's threads carry in the operating system, so ``top -H``, ``ps -L`` and
``/proc/PID/task/*/comm`` tell them apart.

Python (before 3.14) names its threads only for itself: every thread of the process shows the process's
name to the system. The server's CPU goes to two kinds of thread, and which one is busy says what to
tune: :data:`EVENT_LOOP` (sockets, parsing, replies) and :data:`WORKER` (turning drawings into model
inputs and running the model on them, in a process of its own unless told otherwise). Linux keeps at
most 15 bytes of a name.
"""

from __future__ import annotations

import ctypes
import sys
from concurrent.futures import ThreadPoolExecutor

EVENT_LOOP = "livedigit"
"""The thread running the event loop (the process's main thread when served)."""
WORKER = "livedigit-work"
"""The batcher's workers (:mod:`livedigit.workers`): each preprocesses drawings and runs the model on them."""
LABELS = "livedigit-labels"
"""The label store's writer thread."""

MAX_LENGTH = 15
"""Bytes of a thread name Linux keeps (16 with the terminating zero)."""

PR_SET_NAME = 15
"""``prctl``'s option that names the calling thread (``linux/prctl.h``)."""


def name_this_thread(name: str) -> None:
    """Name the calling thread ``name`` (cut to :data:`MAX_LENGTH` bytes) for the system; elsewhere than
    on Linux, or without a C library to call, nothing happens: the name only helps an operator."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:MAX_LENGTH]), 0, 0, 0)
    except (OSError, AttributeError):
        return


def pool(threads: int, name: str) -> ThreadPoolExecutor:
    """A pool of ``threads`` threads, each named ``name`` for the system and ``name_N`` for Python."""
    return ThreadPoolExecutor(threads, thread_name_prefix=name, initializer=name_this_thread, initargs=(name,))
