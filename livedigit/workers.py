"""Preprocessing in processes of their own, so that rendering never holds the server's interpreter lock.

Turning a drawing into the model's 28x28 input is Python and NumPy work that holds the GIL for most of
its time. In the server's process it competes with the event loop, which then answers every connection
late by however long the lock was held. In a worker process it runs on another core beside the event
loop; the server only pickles the drawing there and the 28x28 input back.

The pool is owned by the batcher and started with it (``livedigit serve`` owns the processes; Heroku runs
one process tree per dyno). A worker that dies (killed, out of memory) fails only the images it was
preparing, which the batcher answers ``internal``; the next batch starts a new worker. Workers ignore the
terminal's Ctrl+C and SIGTERM, which the server handles for the whole tree, and die with the server if it
is killed outright. ``workers=0`` prepares in a thread of the server process instead.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from livedigit import threadnames
from livedigit.preprocess import Image, Limits, Pixels, Png, PreprocessError, Strokes, preprocess
from livedigit.wire import Failed, Failure, NoDigit

logger = logging.getLogger("livedigit.workers")

_PR_SET_PDEATHSIG = 1
"""``prctl``'s option that has the kernel signal a process when its parent dies (``linux/prctl.h``)."""


class Deferred(Protocol):
    """A drawing decoded only when a batch takes it (:class:`livedigit.protocol.Undecoded`, a live
    snapshot): one replaced by a newer snapshot before then costs nothing more."""

    @property
    def cost(self) -> int:
        """Its preprocessing work in drawn snapshots, known without decoding it."""
        ...

    def decode(self) -> Image | Failed:
        """The drawing, or why it cannot be served (the reply to give); called where it is prepared."""
        ...


@dataclass(frozen=True, slots=True)
class Prepared:
    """What preprocessing made of one image: the model input, or the outcome that replaces it."""

    model_input: np.ndarray | None
    outcome: NoDigit | Failed | None
    seconds: float
    """Wall time it took, waits for the interpreter lock or a core included."""
    cpu_seconds: float
    """CPU time the preparing thread spent on it: what it cost."""


class WorkerDied(RuntimeError):
    """The process preparing a batch died; its images get ``internal`` and a new worker takes over."""


def prepare(images: Sequence[Image | Deferred], limits: Limits) -> list[Prepared]:
    """Decode (a :class:`Deferred` snapshot) and preprocess each image; refusals and defects become
    outcomes, so one image never fails the others."""
    prepared = []
    for image in images:
        started, cpu = time.perf_counter(), time.thread_time()
        model_input: np.ndarray | None = None
        outcome: NoDigit | Failed | None = None
        try:
            decoded = image if isinstance(image, Pixels | Png | Strokes) else image.decode()
            if isinstance(decoded, Failed):
                outcome = decoded
            else:
                model_input = preprocess(decoded, limits)
                if model_input is None:
                    outcome = NoDigit()
        except PreprocessError as exc:
            outcome = Failed(Failure.BAD_IMAGE, str(exc))
        except Exception as exc:  # A defect, not the client's fault; it must not stop the batcher.
            logger.warning("preprocessing raised %s: %s", type(exc).__name__, exc)
            outcome = Failed(Failure.BAD_IMAGE)
        prepared.append(Prepared(model_input, outcome, time.perf_counter() - started, time.thread_time() - cpu))
    return prepared


def _initialize_worker() -> None:
    """In each worker process: its name, no terminal or platform signals, and death with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threadnames.name_this_thread(threadnames.PREPROCESS)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class PreprocessPool:
    """``workers`` preprocessing processes (or, with 0, one thread of this process)."""

    def __init__(self, workers: int, limits: Limits, on_restart: Callable[[], object] = lambda: None) -> None:
        self.workers = max(0, workers)
        self.limits = limits
        self.on_restart = on_restart
        """Called each time a pool whose worker died is replaced."""
        self._executor: Executor | None = None

    @property
    def lanes(self) -> int:
        """How many chunks of a batch are prepared at once."""
        return max(1, self.workers)

    async def start(self) -> None:
        """Start the workers and have them import everything, so the first batch does not pay for it."""
        await asyncio.gather(*(self.run([]) for _ in range(self.lanes)))

    async def run(self, images: Sequence[Image | Deferred]) -> list[Prepared]:
        """Prepare ``images`` in one worker; raises :class:`WorkerDied` if that worker dies meanwhile.

        A worker found dead before it was given the images (it died idle) is replaced at once and the
        images go to the new one: nothing was lost, so nobody is told.
        """
        executor = self._current()
        try:
            future = executor.submit(prepare, images, self.limits)
        except BrokenProcessPool:
            self._replace(executor)
            future = self._current().submit(prepare, images, self.limits)
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._replace(executor)
            raise WorkerDied("the preprocessing worker died") from None

    def _replace(self, executor: Executor) -> None:
        """Forget a broken pool (once, however many batches found it broken); the next run starts another."""
        if self._executor is executor:
            self.on_restart()
            logger.error("a preprocessing worker died; starting another")
            self._executor = None
            executor.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        """Stop the workers; what they were preparing is abandoned (the batcher answers it)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _current(self) -> Executor:
        """The pool in use, started on first use and after one broke."""
        if self._executor is None:
            if self.workers:
                self._executor = ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_initialize_worker
                )
            else:
                self._executor = threadnames.pool(1, threadnames.PREPROCESS)
        return self._executor
