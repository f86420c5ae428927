"""Preprocessing and the model in processes of their own, so that neither holds the server's interpreter lock.

Turning a drawing into the model's 28x28 input is Python and NumPy work that holds the GIL for most of
its time, and so is the Python around each model call (stacking the inputs, checking the output,
calibrating it, judging the verdicts). In the server's process it would compete with the event loop,
which would then answer every connection late by however long the lock was held. A worker does both
stages one after the other: the server sends it a batch's drawings and receives what the replies need
(probabilities, verdicts, previews), one round trip a batch, rather than taking the inputs back and
handing them on to a model thread.

The pool is owned by the batcher and started with it (``livedigit serve`` owns the processes; Heroku runs
one process tree per dyno). Each worker loads the model itself from a :class:`ModelSpec` (a runtime
cannot travel to another process); a model that does not load stops start-up with its
:class:`~livedigit.runtime.ModelLoadError`. A worker that dies (killed, out of memory) fails only the
images it held, which the batcher answers ``internal``; the next batch starts a new worker. Workers
ignore the terminal's Ctrl+C and SIGTERM, which the server handles for the whole tree, and die with the
server if it is killed outright. ``workers=0`` runs both stages in a thread of the server process
instead, the only place a runtime given as an object (a test's wrapper) can run.

**Scored inline while the server is lightly loaded.** On a machine whose cores sit idle between
batches, every process or thread woken for a batch starts on a cold core: the same batches of three
drawings cost 105-107 us an image back to back and 174-269 us with 3 ms of sleep after each
(``bench/idle.py``, the AMD EPYC of docs/benchmarks.md, 2026-12-06). At light load every batch is
such a batch, and a worker's wake and the pickles each way are much of what a frame costs. So while the
event loop, with all the scoring added, would use less than ``inline_below`` of a core (over the last
:data:`INLINE_WINDOW_S`), a cheap batch (at most :data:`INLINE_COST` of preprocessing work: about 2 ms
with the network) that finds every worker alive and idle is scored on the event loop itself, by a model
loaded in the server process; past that, and for anything more expensive, the workers take every batch.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import numpy as np

from livedigit import threadnames
from livedigit.preprocess import SIZE, Image, Limits, Pixels, Png, PreprocessError, Strokes, model_input
from livedigit.runtime import CLASSES, Runtime, load_runtime
from livedigit.verdict import VerdictRule
from livedigit.wire import Failed, Failure, NoDigit, Verdict

logger = logging.getLogger("livedigit.workers")

INLINE_WINDOW_S = 0.5
"""How often the choice between scoring on the event loop and in the workers is made again, from the CPU
the event loop and the scoring used in the window before."""

INLINE_COST = 16
"""Most preprocessing work (in drawn snapshots, :func:`livedigit.preprocess.cost`) of a batch scored on
the event loop: sixteen whole pen-digits drawings and the network on them took 1.5-1.9 ms
(``bench/idle.py --batch 16``), which every connection waits for while it runs."""

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
class ModelSpec:
    """Where and how a worker loads the model: what :func:`~livedigit.runtime.load_runtime` takes."""

    path: str
    runtime: str = "litert"
    threads: int = 1

    def load(self) -> Runtime:
        return load_runtime(self.path, self.runtime, self.threads)


@dataclass(frozen=True, slots=True)
class Finished:
    """What a worker made of one batch: per image, the outcome that replaces a prediction or ``None`` for
    an image the model scored; the scored images' figures in the same order; what each stage cost.

    The figures travel as three arrays for the whole batch, not as an object per image: the event loop
    unpickles every batch, and a pickled object costs it microseconds of its own."""

    outcomes: list[NoDigit | Failed | None]
    probabilities: np.ndarray
    """Calibrated, (m, 10) for the m images with ``None`` above."""
    previews: np.ndarray
    """Their inputs as 8-bit pixels, (m, 28, 28): each reply's ``preview``."""
    verdicts: list[Verdict]
    preprocess_seconds: list[float]
    """Per image: wall time of its preprocessing."""
    preprocess_cpu_seconds: list[float]
    """Per image: CPU time the worker spent preprocessing it, what it cost."""
    model_seconds: float
    """Wall time of the model call, calibration and verdicts (0 when no image needed the model)."""
    model_cpu_seconds: float
    model_error: str | None = None
    """Why the model call failed; the images it was for are then answered ``internal``."""

    def __reduce__(self) -> tuple[type[Finished], tuple[object, ...]]:
        """Rebuilt from its fields in order: the default of a frozen dataclass with slots looks its
        fields up by name, which the event loop would pay for on every batch."""
        return Finished, (
            self.outcomes,
            self.probabilities,
            self.previews,
            self.verdicts,
            self.preprocess_seconds,
            self.preprocess_cpu_seconds,
            self.model_seconds,
            self.model_cpu_seconds,
            self.model_error,
        )


class WorkerDied(RuntimeError):
    """The process working on a batch died; its images get ``internal`` and a new worker takes over."""


class Scorer:
    """Both stages for one batch, where a worker runs them: preprocess each image, then one model call
    for all that have ink, its output checked so a broken model cannot send garbage, calibrated and
    judged (:mod:`livedigit.verdict`) at once for the batch."""

    def __init__(self, runtime: Runtime, rule: VerdictRule, limits: Limits) -> None:
        self.runtime = runtime
        self.rule = rule
        self.limits = limits

    def __call__(self, images: Sequence[Image | Deferred]) -> Finished:
        """The batch's :class:`Finished`; no images: one blank digit through the model (a warm-up, or a
        check that a failing model recovered), whose failure is the result's ``model_error``."""
        outcomes: list[NoDigit | Failed | None] = []
        inputs: list[np.ndarray] = []
        paths: list[np.ndarray] = []
        reads_path = self.runtime.reads_path
        seconds: list[float] = []
        cpu_seconds: list[float] = []
        for image in images:
            started, cpu = time.perf_counter(), time.thread_time()
            outcome, found = _prepare(image, self.limits, reads_path)
            outcomes.append(outcome)
            if found is not None:
                inputs.append(found[0])
                paths.append(found[1])
            seconds.append(time.perf_counter() - started)
            cpu_seconds.append(time.thread_time() - cpu)
        if images and not inputs:  # nothing drawn needs the model
            return Finished(outcomes, _NO_PROBABILITIES, _NO_PREVIEWS, [], seconds, cpu_seconds, 0.0, 0.0)
        started, cpu = time.perf_counter(), time.thread_time()
        verdicts: list[Verdict] = []
        probabilities, previews, error = _NO_PROBABILITIES, _NO_PREVIEWS, None
        try:
            drawn = np.stack(paths) if reads_path and paths else None
            probabilities, previews, verdicts = self._model(np.stack(inputs or [_BLANK]), drawn)
        except Exception as exc:  # the batcher answers the batch and checks the model again later
            error = f"{type(exc).__name__}: {exc}"
        scored = len(inputs)  # the blank digit of a warm-up is no image's
        return Finished(
            outcomes,
            probabilities[:scored],
            previews[:scored],
            verdicts[:scored],
            seconds,
            cpu_seconds,
            time.perf_counter() - started,
            time.thread_time() - cpu,
            error,
        )

    def _model(self, batch: np.ndarray, paths: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, list[Verdict]]:
        """One model call, its output checked, then calibrated and judged; and the inputs as previews."""
        batch = batch.astype(np.float32, copy=False)
        raw = np.asarray(self.runtime.predict(batch, paths), dtype=np.float64)
        if raw.shape != (len(batch), CLASSES) or not np.isfinite(raw).all():
            raise ValueError(f"the model returned {raw.shape} (or non-finite values) for {batch.shape}")
        probabilities, verdicts = self.rule.judge(raw)
        return probabilities, np.clip(np.rint(batch * 255.0), 0, 255).astype(np.uint8), verdicts


_BLANK = np.zeros((SIZE, SIZE), np.float32)
"""The digit a warm-up or a check of a failing model runs through it."""
_NO_PROBABILITIES = np.empty((0, CLASSES))
_NO_PREVIEWS = np.empty((0, SIZE, SIZE), np.uint8)


def _prepare(
    image: Image | Deferred, limits: Limits, path: bool
) -> tuple[NoDigit | Failed | None, tuple[np.ndarray, np.ndarray] | None]:
    """Decode (a :class:`Deferred` snapshot) and preprocess one image: its model inputs (the image and,
    with ``path``, the pen's path), or the outcome that replaces a prediction. Refusals and defects
    become outcomes, so one image never fails the others."""
    try:
        decoded = image if isinstance(image, Pixels | Png | Strokes) else image.decode()
        if isinstance(decoded, Failed):
            return decoded, None
        found = model_input(decoded, limits, path)
    except PreprocessError as exc:
        return Failed(Failure.BAD_IMAGE, str(exc)), None
    except Exception as exc:  # A defect, not the client's fault; it must not stop the batcher.
        logger.warning("preprocessing raised %s: %s", type(exc).__name__, exc)
        return Failed(Failure.BAD_IMAGE), None
    return (NoDigit(), None) if found is None else (None, found)


def _initialize_worker() -> None:
    """In each worker process: its name, no terminal or platform signals, and death with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threadnames.name_this_thread(threadnames.WORKER)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


FRAME_HEADER = struct.Struct("!I")
"""Each pickled message between the server and a worker is preceded by its length."""


WORKER_PROGRAM = "import sys; sys.path.insert(0, sys.argv[2]); from livedigit.workers import serve; serve()"
"""What a worker process runs: ``python -c WORKER_PROGRAM FD PACKAGE_ROOT``, the socket's descriptor and
the folder this ``livedigit`` was imported from (so a worker runs the server's own code, however that
was found). Started so rather than by ``multiprocessing``, whose ``spawn`` also starts its resource
tracker, an idle process of 12 MB that a worker, which shares no semaphore or memory, has no use for."""


def serve() -> None:
    """A worker process (:data:`WORKER_PROGRAM`): read its settings, load the model, then score each list
    of images sent and send back its :class:`Finished`, until the server's end of the socket closes. A
    model that does not load is sent back instead (the exception), and the worker ends."""
    _initialize_worker()
    channel = socket.socket(fileno=int(sys.argv[1]))
    with channel, channel.makefile("rb") as incoming:

        def receive() -> object:
            header = incoming.read(FRAME_HEADER.size)
            if len(header) < FRAME_HEADER.size:
                raise EOFError
            (size,) = FRAME_HEADER.unpack(header)
            return pickle.loads(incoming.read(size))

        try:
            limits, model, rule = cast(tuple[Limits, ModelSpec, VerdictRule], receive())
            score = Scorer(model.load(), rule, limits)
        except EOFError:
            return
        except Exception as exc:
            channel.sendall(_frame(exc))
            return
        while True:
            try:
                images = cast(list[Image | Deferred], receive())
            except EOFError:
                return
            channel.sendall(_frame(score(images)))


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
        self.waiting: deque[asyncio.Future[Finished]] = deque()
        self.transport: asyncio.Transport | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._received = bytearray()

    @classmethod
    async def start(
        cls, limits: Limits, model: ModelSpec, rule: VerdictRule, on_death: Callable[[_Worker], object]
    ) -> _Worker:
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parent.parent)
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", WORKER_PROGRAM, str(theirs.fileno()), root],
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            ours.sendall(_frame((limits, model, rule)))  # a fresh socket's buffer holds it: never blocks
            _, worker = await asyncio.get_running_loop().connect_accepted_socket(lambda: cls(on_death), ours)
        except BaseException:
            ours.close()
            _end(process)
            raise
        worker.process = process
        return worker

    @property
    def alive(self) -> bool:
        return self.transport is not None and self.process is not None and self.process.poll() is None

    def send(self, images: Sequence[Image | Deferred]) -> asyncio.Future[Finished]:
        assert self.transport is not None
        future: asyncio.Future[Finished] = asyncio.get_running_loop().create_future()
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
            message = pickle.loads(self._received[FRAME_HEADER.size : end])
            del self._received[:end]
            future = self.waiting.popleft()
            if future.done():
                continue
            if isinstance(message, BaseException):  # the model did not load
                future.set_exception(message)
            else:
                future.set_result(message)

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
            _end(self.process)
            self.process = None
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error or WorkerDied("the worker was stopped"))


def _end(process: subprocess.Popen[bytes]) -> None:
    """Kill a worker and reap it (within a second: a process stuck in the kernel is left to init)."""
    process.kill()
    try:
        process.wait(1.0)
    except subprocess.TimeoutExpired:
        logger.warning("worker %d did not exit within a second of SIGKILL", process.pid)


class WorkerPool:
    """``workers`` processes that preprocess and run the model (or, with 0, one thread of this process),
    and while the server is lightly loaded the event loop itself (see the module docstring)."""

    def __init__(
        self,
        workers: int,
        model: ModelSpec | Runtime,
        rule: VerdictRule,
        limits: Limits,
        on_restart: Callable[[], object] = lambda: None,
        inline_below: float = 0.0,
    ) -> None:
        if workers and not isinstance(model, ModelSpec):
            raise ValueError("a runtime given as an object runs in this process: use workers=0")
        self.workers = max(0, workers)
        self.model = model
        self.rule = rule
        self.limits = limits
        self.on_restart = on_restart
        """Called each time a worker that died is replaced, busy or idle, whichever noticed first."""
        self.inline_below = max(0.0, inline_below) if self.workers else 0.0
        """Share of a core the event loop and the scoring together may use while cheap batches are scored
        on the event loop; 0: never."""
        self.inline = 0
        """Batches scored on the event loop so far."""
        self._processes: list[_Worker | None] = [None] * self.workers
        self._thread: Executor | None = None
        self._scorer: Scorer | None = None
        """This process's own: the thread lane's (no workers), or the event loop's (``inline_below``)."""
        self._starting = asyncio.Lock()
        """Held while a worker starts, so that two batches for one lane never start two."""
        self._inline = self.inline_below > 0
        self._window = (0.0, 0.0)
        """When the current window began: the wall clock and the event loop's CPU time."""
        self._worker_cpu = 0.0
        """CPU seconds the workers spent scoring batches in the current window (the event loop's own
        scoring is in its CPU time)."""

    @property
    def lanes(self) -> int:
        """How many batches are worked on at once, one in each worker."""
        return max(1, self.workers)

    async def start(self) -> list[Finished]:
        """Start every lane and run a blank digit through each, so the first batch does not pay for the
        imports and the model's first call. Raises the model's :class:`~livedigit.runtime.ModelLoadError`;
        a model that loads but fails on the blank digit is each result's ``model_error``."""
        if not self.workers:
            return [await self.run([])]
        warmed = list(await asyncio.gather(*(self._run_in(lane, []) for lane in range(self.workers))))
        if self.inline_below > 0:  # the workers loaded the model: it loads here too
            self._scorer = Scorer(cast(ModelSpec, self.model).load(), self.rule, self.limits)
            warmed.append(self._scorer([]))
            self._window = (time.perf_counter(), time.thread_time())
        return warmed

    async def run(self, images: Sequence[Image | Deferred], cost: int = 1) -> Finished:
        """Score ``images`` (``cost``: their preprocessing work, :func:`livedigit.preprocess.cost`) on the
        event loop, while the server is lightly loaded and the batch is cheap (the module docstring), or
        else in the lane with the fewest batches waiting (the first of equals); raises
        :class:`WorkerDied` if its worker dies meanwhile.

        A batch goes whole to one worker: split across workers, a light load's batch of three cost two
        round trips and woke two processes (8% more CPU per frame at 100 people drawing, on 2 cores).
        A second worker so takes a batch only while the first has one waiting, and under load each
        works through batches of its own, on a core of its own.
        """
        if not self.workers:
            return await asyncio.get_running_loop().run_in_executor(self._in_thread(), self._score_here, images)
        if self._scorer is not None:
            self._choose()
            # Only beside live, idle workers: the first batch after a worker died goes to its lane and
            # starts the new one, as it always did, rather than leaving the lane empty until load rises.
            if self._inline and cost <= INLINE_COST and all(map(self._ready, range(self.workers))):
                self.inline += 1
                return self._scorer(images)
        lane = min(range(self.workers), key=self._waiting)
        finished = await self._run_in(lane, images)
        self._worker_cpu += sum(finished.preprocess_cpu_seconds) + finished.model_cpu_seconds
        return finished

    def _choose(self) -> None:
        """Once a window has passed: score on the event loop in the next one if the event loop's CPU (its
        own scoring included) and the workers' scoring came to less than ``inline_below`` of a core in
        this one."""
        started, cpu = self._window
        now = time.perf_counter()
        if now - started < INLINE_WINDOW_S:
            return
        used = time.thread_time()
        self._inline = (used - cpu + self._worker_cpu) / (now - started) < self.inline_below
        self._window = (now, used)
        self._worker_cpu = 0.0

    def _ready(self, lane: int) -> bool:
        """Whether ``lane`` has a live worker with nothing to do."""
        worker = self._processes[lane]
        return worker is not None and worker.alive and not worker.waiting

    def _waiting(self, lane: int) -> int:
        worker = self._processes[lane]
        return 0 if worker is None else len(worker.waiting)

    async def _run_in(self, lane: int, images: Sequence[Image | Deferred]) -> Finished:
        """Score ``images`` in ``lane``. A worker found dead before it was given the images (it died
        idle) is replaced at once and the images go to the new one: nothing was lost, so nobody is told.
        """
        worker = self._processes[lane]
        if worker is None or not worker.alive:
            async with self._starting:
                worker = self._processes[lane]
                if worker is None or not worker.alive:
                    if worker is not None:  # found dead while idle: nothing was lost, but it is a restart
                        self.on_restart()
                        logger.error("a worker died while idle; starting another")
                        worker.stop()
                    assert isinstance(self.model, ModelSpec)
                    worker = self._processes[lane] = await _Worker.start(self.limits, self.model, self.rule, self._died)
        return await worker.send(images)

    def _in_thread(self) -> Executor:
        if self._thread is None:
            self._thread = threadnames.pool(1, threadnames.WORKER)
        return self._thread

    def _score_here(self, images: Sequence[Image | Deferred]) -> Finished:
        """The thread lane (no workers): the model loaded there on first use (or the runtime given), then
        both stages."""
        if self._scorer is None:
            runtime = self.model.load() if isinstance(self.model, ModelSpec) else self.model
            self._scorer = Scorer(runtime, self.rule, self.limits)
        return self._scorer(images)

    def _died(self, worker: _Worker) -> None:
        """A worker's socket closed under it: its batches fail and the next run in its lane starts another."""
        self.on_restart()
        logger.error("a worker died; starting another")
        worker.stop(WorkerDied("the worker died"))
        self._processes = [None if current is worker else current for current in self._processes]

    def shutdown(self) -> None:
        """Stop the workers; what they were working on is abandoned (the batcher answers it)."""
        processes, self._processes = self._processes, [None] * self.workers
        for worker in processes:
            if worker is not None:
                worker.stop()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False, cancel_futures=True)
