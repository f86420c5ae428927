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
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from multiprocessing.connection import Connection
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


def _serve(connection: Connection, limits: Limits) -> None:
    """A worker process: prepare each list of images sent, send back the results, until the pipe closes."""
    _initialize_worker()
    with connection:
        while True:
            try:
                images = connection.recv()
            except EOFError:
                return
            connection.send(prepare(images, limits))


class _Worker:
    """One worker process and the pipe it is fed through.

    The event loop writes a batch into the pipe and reads the results when the pipe is readable, so a
    batch costs it one pickle each way and no thread of the server: ``ProcessPoolExecutor`` spends two
    threads (a feeder and a result reader), which took the interpreter lock for about 80 us per answered
    frame. The worker answers its batches in the order they were sent. The batcher gives a worker one
    batch at a time, so neither side can block writing into a full pipe while the other does too.
    """

    def __init__(self, limits: Limits, on_death: Callable[[_Worker], object]) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs, limits), name=threadnames.PREPROCESS, daemon=True)
        self.process.start()
        theirs.close()
        self.on_death = on_death
        self.waiting: deque[asyncio.Future[list[Prepared]]] = deque()
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.connection.fileno(), self._readable)

    @property
    def alive(self) -> bool:
        return not self.connection.closed and self.process.exitcode is None

    def send(self, images: Sequence[Image | Deferred]) -> asyncio.Future[list[Prepared]]:
        future: asyncio.Future[list[Prepared]] = self.loop.create_future()
        self.connection.send(list(images))  # BrokenPipeError or OSError when the worker is gone
        self.waiting.append(future)
        return future

    def _readable(self) -> None:
        try:
            prepared = self.connection.recv()
        except (EOFError, OSError):
            self.on_death(self)
            return
        future = self.waiting.popleft()
        if not future.done():
            future.set_result(prepared)

    def stop(self, error: BaseException | None = None) -> None:
        """Close the pipe and kill the process; batches still waiting fail with ``error``."""
        if not self.connection.closed:
            self.loop.remove_reader(self.connection.fileno())
            self.connection.close()
        self.process.kill()
        self.process.join(1.0)
        self.process.close()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error or WorkerDied("the preprocessing worker was stopped"))


class PreprocessPool:
    """``workers`` preprocessing processes (or, with 0, one thread of this process)."""

    def __init__(self, workers: int, limits: Limits, on_restart: Callable[[], object] = lambda: None) -> None:
        self.workers = max(0, workers)
        self.limits = limits
        self.on_restart = on_restart
        """Called each time a worker that died is replaced."""
        self._processes: list[_Worker | None] = [None] * self.workers
        self._thread: Executor | None = None
        self._next = 0

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
        if not self.workers:
            if self._thread is None:
                self._thread = threadnames.pool(1, threadnames.PREPROCESS)
            return await asyncio.get_running_loop().run_in_executor(self._thread, prepare, images, self.limits)
        lane, self._next = self._next, (self._next + 1) % self.workers
        worker = self._processes[lane]
        if worker is None or not worker.alive:
            worker = self._start(lane, worker)
        try:
            future = worker.send(images)
        except OSError:
            future = self._start(lane, worker).send(images)
        return await future

    def _start(self, lane: int, dead: _Worker | None) -> _Worker:
        """A new worker in ``lane``, replacing ``dead`` (found dead while idle: nothing was lost)."""
        if dead is not None:
            dead.stop()
        worker = self._processes[lane] = _Worker(self.limits, self._died)
        return worker

    def _died(self, worker: _Worker) -> None:
        """A worker's pipe closed under it: its batches fail and the next run in its lane starts another."""
        self.on_restart()
        logger.error("a preprocessing worker died; starting another")
        worker.stop(WorkerDied("the preprocessing worker died"))
        self._processes = [None if current is worker else current for current in self._processes]

    def shutdown(self) -> None:
        """Stop the workers; what they were preparing is abandoned (the batcher answers it)."""
        processes, self._processes = self._processes, [None] * self.workers
        for worker in processes:
            if worker is not None:
                worker.stop()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False, cancel_futures=True)
