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
import pickle
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol, cast

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

    def __reduce__(self) -> tuple[type[Prepared], tuple[np.ndarray | None, NoDigit | Failed | None, float, float]]:
        """Rebuilt from its fields in order: the event loop unpickles one per image, and the default of a
        frozen dataclass with slots looks its fields up for each (about 2% of a saturated event loop)."""
        return Prepared, (self.model_input, self.outcome, self.seconds, self.cpu_seconds)


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


FRAME_HEADER = struct.Struct("!I")
"""Each pickled message between the server and a worker is preceded by its length."""


def _serve(channel: socket.socket, limits: Limits) -> None:
    """A worker process: prepare each list of images sent, send back the results, until the server's end
    of the socket closes."""
    _initialize_worker()
    with channel, channel.makefile("rb") as incoming:
        while len(header := incoming.read(FRAME_HEADER.size)) == FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack(header)
            images = pickle.loads(incoming.read(size))
            channel.sendall(_frame(prepare(images, limits)))


def _frame(message: object) -> bytes:
    payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(payload)) + payload


class _Worker(asyncio.Protocol):
    """One worker process, spoken to over a socket pair on the event loop.

    A batch costs the event loop one pickle each way, written and read by its transport, which never
    blocks; ``ProcessPoolExecutor`` spends two threads of the server (a feeder and a result reader) that
    took the interpreter lock for about 80 us per answered frame. The worker answers its batches in the
    order they were sent. The messages are pickles: the worker is this program's own child.
    """

    def __init__(self, on_death: Callable[[_Worker], object]) -> None:
        self.on_death = on_death
        self.waiting: deque[asyncio.Future[list[Prepared]]] = deque()
        self.transport: asyncio.Transport | None = None
        self.process: multiprocessing.process.BaseProcess | None = None
        self._received = bytearray()

    @classmethod
    async def start(cls, limits: Limits, on_death: Callable[[_Worker], object]) -> _Worker:
        ours, theirs = socket.socketpair()
        context = multiprocessing.get_context("spawn")
        process = context.Process(target=_serve, args=(theirs, limits), name=threadnames.PREPROCESS, daemon=True)
        try:
            process.start()
        finally:
            theirs.close()
        try:
            _, worker = await asyncio.get_running_loop().connect_accepted_socket(lambda: cls(on_death), ours)
        except BaseException:
            ours.close()
            process.kill()
            process.join(1.0)
            raise
        worker.process = process
        return worker

    @property
    def alive(self) -> bool:
        return self.transport is not None and self.process is not None and self.process.exitcode is None

    def send(self, images: Sequence[Image | Deferred]) -> asyncio.Future[list[Prepared]]:
        assert self.transport is not None
        future: asyncio.Future[list[Prepared]] = asyncio.get_running_loop().create_future()
        self.transport.write(_frame(list(images)))
        self.waiting.append(future)
        return future

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        self._received += data
        while len(self._received) >= FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack_from(self._received)
            end = FRAME_HEADER.size + size
            if len(self._received) < end:
                return
            prepared = pickle.loads(self._received[FRAME_HEADER.size : end])
            del self._received[:end]
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(prepared)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.transport = None
            self.on_death(self)

    def stop(self, error: BaseException | None = None) -> None:
        """Close the socket and kill the process; batches still waiting fail with ``error``."""
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()
        if self.process is not None:
            self.process.kill()
            self.process.join(1.0)
            self.process.close()
            self.process = None
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
        """Called each time a worker that died is replaced, busy or idle, whichever noticed first."""
        self._processes: list[_Worker | None] = [None] * self.workers
        self._thread: Executor | None = None
        self._next = 0
        self._starting = asyncio.Lock()
        """Held while a worker starts, so that two batches for one lane never start two."""

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
            async with self._starting:
                worker = self._processes[lane]
                if worker is None or not worker.alive:
                    if worker is not None:  # found dead while idle: nothing was lost, but it is a restart
                        self.on_restart()
                        logger.error("a preprocessing worker died while idle; starting another")
                        worker.stop()
                    worker = self._processes[lane] = await _Worker.start(self.limits, self._died)
        return await worker.send(images)

    def _died(self, worker: _Worker) -> None:
        """A worker's socket closed under it: its batches fail and the next run in its lane starts another."""
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
