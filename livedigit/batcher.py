"""Dynamic batching: one queue per process in front of one model, shared by every connection.

A batch is taken as soon as a worker is free for it, from whatever is queued (up to ``max_batch``). A
worker (:mod:`livedigit.workers`, a process of its own) turns the batch's drawings into model inputs and
runs the model on them, so that none of that work holds the event loop's interpreter lock, and sends
back what the replies need: one round trip a batch. :data:`IN_FLIGHT` batches are taken at once (one
more than there are workers, with several), so a worker starts on the next one while the results of
the last travel back and wait for the event loop; each batch goes whole to the worker with the least
waiting, or, while the server is lightly loaded and the batch is cheap, is scored on the event loop
itself (:class:`~livedigit.workers.WorkerPool`). A batch waits for more items (at most
``max_wait_ms``) only while they are arriving faster than that; a lone client is never delayed.

The queue is bounded by design:

* **Snapshots** have one slot per connection (latest wins). A newer snapshot replaces the queued one,
  which is answered ``dropped``/``stale`` without ever being preprocessed; the slot keeps its place in
  line, so a connection that streams fast is not pushed to the back. A submit overtakes the queued
  snapshot the same way: the final drawing makes an older live frame pointless, and its reply (sent in
  order) would otherwise hold the submit's reply back. Once taken into a batch, a snapshot
  is committed and gets its prediction, which guarantees every connection progress under load.
* **Submits** are never replaced, at most ``max_pending_submits`` of them in all and
  ``max_pending_per_client`` (three quarters of that unless told otherwise) from one client address;
  beyond that a submit is refused with ``overloaded`` (and a hint of when to retry). They are served
  round robin over client addresses, then over each address's connections, each connection's in order
  (:mod:`livedigit.fairness`), and a batch holds at most :data:`BATCH_COST` of preprocessing work, so
  neither many connections nor expensive images from one address can hold another's submit back for
  more than about one image.

**Who goes first** (:meth:`Batcher._take`). A person's final answer goes before everything: the submit
of a connection that sent snapshots since its last submit (the page's Submit of a drawing), one per
connection at a time (a further one waits with the other submits). Under overload a person so still
gets the answer to Submit promptly while the live frames slow down; as each connection has at most one
such submit waiting, they are bounded by the connections, and bulk work cannot jump the queue with them.
Next, live snapshots of people drawing go before submits, but never take all of a batch: while
submits wait they get at least ``submit_share`` of every batch (a quarter by default), so bulk work
always progresses; whatever room the snapshots leave goes to submits too (work conserving: an
otherwise idle server gives one script whole batches). While people are drawing (a snapshot arrived
within :data:`LIVE_WINDOW`), submits fill a batch only up to what it serves in ``live_batch_ms`` (at
the pace it measures per image), so that the batches a drawer's next snapshot waits behind stay short
on any machine: its latency is about three of them. Under overload snapshots wait; a connection whose
snapshot has waited :data:`SNAPSHOT_DEADLINE` is answered ``dropped``/``overloaded``.

Every job's future is resolved exactly once with an :data:`Outcome`, whatever happens (model failure,
a worker's death, disconnect, shutdown), so a caller can always answer its client.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Hashable
from dataclasses import dataclass

from livedigit.fairness import FairQueue, Slots
from livedigit.metrics import Metrics
from livedigit.preprocess import Image, Limits, Pixels, Png, Strokes, cost
from livedigit.runtime import Runtime
from livedigit.verdict import VerdictRule
from livedigit.wire import DropReason, Failed, Failure, Outcome, Scored, Shed, Work
from livedigit.workers import Deferred, Finished, ModelSpec, WorkerDied, WorkerPool

logger = logging.getLogger("livedigit.batcher")

SNAPSHOT_DEADLINE = 1.0
"""Seconds a connection's snapshot may wait for the model before it is shed as ``overloaded``: a live
prediction that late no longer matches what the person sees."""

ARRIVAL_SMOOTHING = 0.2
"""Weight of the newest gap in the moving average of the time between arrivals."""

PROBE_INTERVAL = 5.0
"""Seconds between test batches while the model is failing and no traffic tells whether it recovered."""

RESERVED_SHARE = 4
"""Unless told otherwise (``max_pending_per_client``), a quarter of ``max_pending_submits`` is kept for
other addresses than the one submitting: a lone script may queue three quarters of it, and however fast
one address submits, the others find room."""

BATCH_COST = 64
"""Most preprocessing work one batch takes, in drawn snapshots (:func:`livedigit.preprocess.cost`): its
replies wait for all of it, so a batch never holds more than about 20 ms of it, unless one image alone
costs more."""

MAX_ARRIVAL_GAP = 0.1
"""Gaps are capped at this (seconds) so that one idle period does not disable waiting for long."""

LIVE_WINDOW = 1.0
"""Seconds after a snapshot arrived during which people count as drawing: submits then fill a batch only
up to ``live_batch_ms`` of work, unless their share of the snapshots' batch needs more."""

RETRY_AFTER_BOUNDS = (0.01, 5.0)
"""The shortest and longest wait (seconds) an ``overloaded`` refusal suggests."""

IN_FLIGHT = 2
"""Batches sent to one worker at once (each by a feed task of its own); with several workers, one batch
more than there are workers. With one batch per worker, a worker sat idle while each batch's results
went back to the event loop; a batch taken early is not replaced by newer snapshots, so more would
score frames that are already stale, and a submit would wait behind them: with two batches per worker
on two workers, the submits of 600 people streaming past the knee waited 155 ms at p99, with three
batches in all 115 ms (one run each, 2026-12-05)."""


def _cheap(job: Job) -> bool:
    """Whether a job may share a batch: it costs at most :data:`BATCH_COST` to preprocess."""
    return job.cost <= BATCH_COST


_DRAWINGS = (Pixels, Png, Strokes)
"""The decoded images (a tuple: ``isinstance`` with a union builds the union on every call)."""

THROUGHPUT_SMOOTHING = 0.2
"""Weight of the newest batch in the moving average of the seconds per image a worker spends (both
stages, over the lanes working at once): the pace at which the batcher serves images."""


@dataclass(eq=False, slots=True)
class Job:
    """One image on its way through the batcher."""

    kind: Work
    image: Image | Deferred | None
    owner: Hashable | None
    client: Hashable
    """The client address: submits are served round robin over addresses (:mod:`livedigit.fairness`)."""
    cost: int
    """Preprocessing work in drawn snapshots (:func:`livedigit.preprocess.cost`)."""
    future: asyncio.Future[Outcome]
    enqueued: float
    since: float
    """For a snapshot: when its connection's slot started waiting (kept when a newer one replaces it)."""
    abandoned: bool = False
    """Set on the event loop when the owner disconnected: its outcome is then ``stale``."""


class Batcher:
    """Owns the queue and the workers; see the module docstring."""

    def __init__(
        self,
        model: ModelSpec | Runtime,
        metrics: Metrics,
        *,
        limits: Limits,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        max_pending_submits: int = 256,
        max_pending_per_client: int | None = None,
        submit_share: float = 0.25,
        live_batch_ms: float = 2.5,
        snapshot_deadline: float = SNAPSHOT_DEADLINE,
        workers: int = 1,
        inline_below: float = 0.0,
        verdict: VerdictRule | None = None,
    ) -> None:
        """``model``: what each worker process loads, or a runtime to run in a thread of this process
        (``workers=0``). ``inline_below``: when the event loop scores batches itself
        (:class:`~livedigit.workers.WorkerPool`). ``verdict``: calibration and verdict of every batch; the
        default rule leaves the probabilities as the model gave them."""
        self.metrics = metrics
        self.limits = limits
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.max_pending_submits = max(0, max_pending_submits)
        self.max_pending_per_client = (
            max(1, self.max_pending_submits - self.max_pending_submits // RESERVED_SHARE)
            if max_pending_per_client is None
            else max(0, max_pending_per_client)
        )
        self.submit_share = min(1.0, max(0.0, submit_share))
        self.live_batch_seconds = max(0.0, live_batch_ms) / 1000.0
        self.snapshot_deadline = snapshot_deadline
        self._workers = WorkerPool(
            workers,
            model,
            verdict or VerdictRule(),
            limits,
            metrics.worker_restarts.inc,
            inline_below,
        )
        self._submits: FairQueue[Job] = FairQueue()
        self._snapshots: Slots[Job] = Slots()
        self._answers: dict[Hashable, Job] = {}
        """Each drawing connection's final submit, in arrival order: taken before anything else."""
        self._drawing: set[Hashable] = set()
        """Connections that sent a snapshot since their last submit."""
        self._taken: set[Job] = set()
        self._work = asyncio.Event()
        self._batches = 0
        """Batches at the workers."""
        self._heavy = 0
        """Of those, batches of one image that costs more than :data:`BATCH_COST`."""
        self._room = asyncio.Event()
        """Set each time a batch comes back from the workers."""
        self._tasks: list[asyncio.Task[None]] = []
        self._probing: asyncio.Task[None] | None = None
        self._last_run = 0.0
        self._running = False
        self._healthy = False
        self._gap: float | None = None
        self._last_arrival: float | None = None
        self._last_snapshot = -math.inf
        self._image_seconds = 0.0
        metrics.queued_snapshots.set_function(lambda: self.queued[0])
        metrics.queued_submits.set_function(lambda: self.queued[1])
        metrics.in_flight.set_function(lambda: self.in_flight)
        metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)

    @property
    def queued(self) -> tuple[int, int]:
        """Snapshots and submits waiting to be taken into a batch."""
        return len(self._snapshots), len(self._submits) + len(self._answers)

    @property
    def live_images(self) -> int:
        """How many images the batcher serves in ``live_batch_ms`` at the recent pace (at least one)."""
        if self._image_seconds <= 0:
            return self.max_batch
        return max(1, min(self.max_batch, int(self.live_batch_seconds / self._image_seconds)))

    def room(self, client: Hashable) -> int:
        """Submits ``client`` may still queue before it is refused with ``overloaded``."""
        return max(
            0,
            min(
                self.max_pending_submits - len(self._submits), self.max_pending_per_client - self._submits.count(client)
            ),
        )

    @property
    def in_flight(self) -> int:
        """Jobs taken into a batch and not answered yet."""
        return len(self._taken)

    @property
    def ready(self) -> bool:
        """Running, and the last model call succeeded (false after a failure until a batch succeeds)."""
        return self._running and self._healthy

    async def start(self) -> None:
        """Start the workers and run a blank digit through each (so the first client does not pay for
        it), start serving.

        Raises the model's :class:`~livedigit.runtime.ModelLoadError`, or ``RuntimeError`` with what the
        model raised on the blank digit; the batcher is then not started.
        """
        try:
            started = time.perf_counter()
            warmed = await self._workers.start()
            self._image_seconds = time.perf_counter() - started
            failures = [finished.model_error for finished in warmed if finished.model_error is not None]
            if failures:
                raise RuntimeError(failures[0])
        except BaseException:
            self._workers.shutdown()
            raise
        self._running = True
        self._healthy = True
        self._last_run = time.perf_counter()
        self._tasks = [
            asyncio.create_task(self._feed(), name=f"livedigit-batcher-feed-{feed}")
            for feed in range(self._workers.lanes + IN_FLIGHT - 1)
        ]

    async def stop(self) -> None:
        """Stop serving; every job still queued or in flight is answered ``overloaded``."""
        self._running = False
        tasks = [*self._tasks, *([self._probing] if self._probing is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self._probing = [], None
        shutting_down = Failed(Failure.SHUTTING_DOWN)
        for job in [*self._answers.values(), *self._submits, *self._snapshots, *self._taken]:
            self._resolve(job, shutting_down)
        self._answers.clear()
        self._submits.clear()
        self._snapshots.clear()
        self._workers.shutdown()

    def enqueue(
        self,
        kind: Work,
        image: Image | Deferred,
        owner: Hashable | None = None,
        client: Hashable = None,
        *,
        final: bool = False,
    ) -> asyncio.Future[Outcome]:
        """Queue one image; the returned future resolves once with its :data:`Outcome`.

        ``owner`` identifies the connection: it is the key of the latest-wins snapshot slot and what
        :meth:`forget` releases. Snapshots need one; submits may have none (HTTP). ``client`` is the
        client's address, the unit of fairness between submits. ``final``: a submit of its own (a
        WebSocket ``submit``, not an item of a batch), which goes first if its connection is drawing
        (see "Who goes first").
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        now = time.perf_counter()
        work = cost(image) if isinstance(image, _DRAWINGS) else image.cost
        if not self._running:
            future.set_result(Failed(Failure.NOT_READY))
            return future
        if kind == "submit":
            answer = (
                final
                and owner is not None
                and owner in self._drawing
                and owner not in self._answers
                and not self._submits.holds(client, owner)
            )
            self._drawing.discard(owner)
            if not answer and not self.room(client):
                future.set_result(Failed(Failure.BUSY, retry_after=self.retry_after(client)))
                return future
            self.supersede(owner)
            job = Job(kind, image, owner, client, work, future, now, now)
            if answer:
                self._answers[owner] = job
            else:
                self._submits.push(job)
        else:
            if owner is None:
                raise ValueError("a snapshot needs an owner (its connection)")
            job = Job(kind, image, owner, client, work, future, now, now)
            previous = self._snapshots.put(job)
            if previous is not None:
                job.since = previous.since
                self._resolve(previous, Shed(DropReason.STALE))
            self._last_snapshot = now
            self._drawing.add(owner)
        self._note_arrival(now)
        self._work.set()
        return future

    def supersede(self, owner: Hashable | None) -> None:
        """A submit of ``owner`` arrived: its queued snapshot, if any, is answered ``dropped``/``stale``."""
        overtaken = self._snapshots.pop(owner) if owner is not None else None
        if overtaken is not None:
            self._resolve(overtaken, Shed(DropReason.STALE))

    def forget(self, owner: Hashable) -> None:
        """Release everything of a connection that went away: nothing of it is computed or kept."""
        gone = Shed(DropReason.STALE)
        self._drawing.discard(owner)
        for slot in (self._snapshots.pop(owner), self._answers.pop(owner, None)):
            if slot is not None:
                self._resolve(slot, gone)
        for job in self._submits.remove_owner(owner):
            self._resolve(job, gone)
        for job in self._taken:
            if job.owner is owner:
                job.abandoned = True

    # The work.

    async def _feed(self) -> None:
        """Take a batch, have the workers score it and answer it, then the next one (one of
        :data:`IN_FLIGHT` such loops).

        While an expensive image (a batch of its own) is at the workers, no batch is sent to wait behind
        another: a submit taken behind a second 1024x1024 PNG waited for all of it. During the attack
        tests' siege of such images a bystander's p99 was 164-167 ms so, and 135-180 ms without (one
        worker, 2026-12-05). With two workers, the one beside an expensive image takes only cheap work:
        with both of them on such images, nothing was left of the two cores for the event loop, and the
        bystander's p99 was 221-283 ms."""
        loop = asyncio.get_running_loop()
        while True:
            while not self._answers and not self._submits and not self._snapshots:
                self._work.clear()
                await self._work.wait()
            await self._linger(loop)
            # Checked after lingering, with nothing awaited before the take: checked before, it let two
            # feeds that lingered together each take an expensive image.
            while self._heavy and self._batches >= self._workers.lanes:
                self._room.clear()
                await self._room.wait()
            jobs = self._take(time.perf_counter(), cheap_only=self._heavy > 0)
            if not jobs and self._heavy:  # only expensive images wait, and one is at a worker
                await self._room_or_work()
                continue
            cost = sum(job.cost for job in jobs)
            heavy = cost > BATCH_COST
            self._batches += 1
            self._heavy += heavy
            try:
                await self._score(jobs, cost)
            except Exception:  # A defect; the jobs still get an answer and the batcher keeps serving.
                logger.exception("scoring a batch of %d failed", len(jobs))
                self._fail(jobs, Failure.PREPROCESS_FAILED)
            finally:
                self._batches -= 1
                self._heavy -= heavy
                self._room.set()

    async def _score(self, jobs: list[Job], cost: int) -> None:
        """Score ``jobs`` (``cost``: their preprocessing work) and answer each."""
        wanted, images = [], []
        for job in jobs:
            if job.abandoned or job.image is None:
                self._resolve(job, Shed(DropReason.STALE))
            else:
                wanted.append(job)
                images.append(job.image)
        if not wanted:
            return
        inline = self._workers.inline
        try:
            finished = await self._workers.run(images, cost)
        except WorkerDied:
            self._fail(wanted, Failure.PREPROCESS_FAILED)
            return
        # Scored on the event loop (no worker then has a batch, so no other batch was meanwhile): one lane.
        on_the_loop = self._workers.inline > inline
        if on_the_loop:
            self.metrics.scored_inline.inc()
        self._answer(wanted, finished, 1 if on_the_loop else self._workers.lanes)

    def _answer(self, jobs: list[Job], finished: Finished, lanes: int) -> None:
        """Answer a batch's jobs with what ``lanes`` scoring at once made of them, and note what it cost."""
        self._last_run = time.perf_counter()
        metrics = self.metrics
        scored = []
        for job, outcome, seconds, cpu_seconds in zip(
            jobs, finished.outcomes, finished.preprocess_seconds, finished.preprocess_cpu_seconds, strict=True
        ):
            metrics.preprocess.observe(seconds)
            metrics.preprocess_cpu.observe(cpu_seconds)
            if outcome is None:
                scored.append(job)
            else:
                self._resolve(job, Shed(DropReason.STALE) if job.abandoned else outcome)
        # A worker works through both stages in turn and the workers work at once: its time per image,
        # over the lanes, is the pace.
        per_image = (sum(finished.preprocess_seconds) + finished.model_seconds) / len(jobs) / lanes
        self._image_seconds += THROUGHPUT_SMOOTHING * (per_image - self._image_seconds)
        if not scored:
            return
        if finished.model_error is not None:
            logger.error(
                "the model failed on a batch of %d (%s); answering 'internal'", len(scored), finished.model_error
            )
            self._healthy = False
            metrics.batch_failures.inc()
            self._fail(scored, Failure.MODEL_FAILED)
            if self._probing is None or self._probing.done():
                self._probing = asyncio.ensure_future(self._probe())
            return
        self._healthy = True
        metrics.inference.observe(finished.model_seconds)
        metrics.inference_cpu.observe(finished.model_cpu_seconds)
        metrics.batch_size.observe(len(scored))
        outcomes = Scored.each(finished.probabilities, finished.previews, finished.verdicts)
        for job, result in zip(scored, outcomes, strict=True):
            self._resolve(job, Shed(DropReason.STALE) if job.abandoned else result)

    async def _probe(self) -> None:
        """While the model is failing: after :data:`PROBE_INTERVAL` without a batch, run a blank digit
        through it, so readiness recovers without waiting for traffic."""
        while self._running and not self._healthy:
            await asyncio.sleep(max(0.0, self._last_run + PROBE_INTERVAL - time.perf_counter()))
            if self._healthy or time.perf_counter() - self._last_run < PROBE_INTERVAL:
                continue
            self._last_run = time.perf_counter()
            try:
                error = (await self._workers.run([])).model_error
            except Exception as exc:
                error = str(exc)
            if error is not None:
                logger.warning("the model still fails (%s); next check in %.0f s", error, PROBE_INTERVAL)
                continue
            logger.info("the model answers again; ready")
            self._healthy = True

    # Helpers.

    async def _linger(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait up to ``max_wait`` for a fuller batch, but only while the next item is due before then."""
        if self.max_wait <= 0 or self.max_batch <= 1:
            return
        deadline = loop.time() + self.max_wait
        while len(self._answers) + len(self._submits) + len(self._snapshots) < self.max_batch:
            remaining = deadline - loop.time()
            gap = self._gap
            if gap is None or gap >= remaining:
                return
            self._work.clear()
            try:
                await asyncio.wait_for(self._work.wait(), timeout=min(remaining, 2 * gap))
            except TimeoutError:
                return

    async def _room_or_work(self) -> None:
        """Wait until a batch comes back from the workers or more work arrives."""
        self._room.clear()
        self._work.clear()
        waits = [asyncio.ensure_future(self._room.wait()), asyncio.ensure_future(self._work.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _take(self, now: float, cheap_only: bool = False) -> list[Job]:
        """The next batch, within ``max_batch`` images and :data:`BATCH_COST` of preprocessing work (an
        image that costs more than that goes alone, and with ``cheap_only`` not at all: it waits in its
        place); see "Who goes first" in the module docstring.

        1. People's final answers, in the order they came, up to a full batch.
        2. The snapshot slots in line order, one per client address before a second, leaving
           ``submit_share`` of the batch to waiting submits; snapshots past their deadline are shed.
        3. Submits in fair order in the room left: up to a full batch, or while people are drawing up
           to ``live_batch_ms`` of work (:attr:`live_images`), or more if that is what gives the submits
           their share.
        """
        jobs: list[Job] = []
        work = 0

        def fits(job: Job, images: int, most_work: int) -> bool:
            return not jobs or (len(jobs) < images and work + job.cost <= most_work)

        expired = list(itertools.takewhile(lambda job: now - job.since > self.snapshot_deadline, self._snapshots))
        for job in expired:
            self._snapshots.pop(job.owner)
            self._resolve(job, Shed(DropReason.OVERLOADED))
        for owner, job in list(self._answers.items()):
            if cheap_only and not _cheap(job):
                continue
            if not fits(job, self.max_batch, BATCH_COST):
                break
            del self._answers[owner]
            jobs.append(job)
            work += job.cost
        others = 1.0 - self.submit_share if self._submits else 1.0
        images, most_work = math.floor(others * self.max_batch), math.floor(others * BATCH_COST)
        served: set[Hashable] = set()
        waiting = self._snapshots.clients  # addresses with a snapshot waiting
        for first_pass in (True, False):
            for job in list(self._snapshots) if images else ():
                if first_pass:
                    if len(served) == waiting:
                        break  # every waiting address has one in the batch: the rest go in line order
                    if job.client in served:
                        continue
                if cheap_only and not _cheap(job):
                    continue
                if not fits(job, images, most_work):
                    break
                self._snapshots.pop(job.owner)
                jobs.append(job)
                work += job.cost
                served.add(job.client)
        images, most_work = self.max_batch, BATCH_COST
        if now - self._last_snapshot < LIVE_WINDOW and self.submit_share < 1.0:
            least = 1.0 - self.submit_share
            images = min(images, max(self.live_images, math.ceil(len(jobs) / least)))
            most_work = min(most_work, max(self.live_images, math.ceil(work / least)))
        while self._submits:
            next_job = self._submits.first(_cheap) if cheap_only else self._submits.peek()
            if next_job is None or not fits(next_job, images, most_work):
                break
            jobs.append(job := self._submits.pop(next_job))
            work += job.cost
        for job in jobs:
            self.metrics.queue_wait.observe(now - job.enqueued)
        self._taken.update(jobs)
        return jobs

    def _fail(self, jobs: list[Job], why: Failure) -> None:
        failure = Failed(why)
        for job in jobs:
            self._resolve(job, failure)

    def _resolve(self, job: Job, outcome: Outcome) -> None:
        self._taken.discard(job)
        job.image = None
        if not job.future.done():
            job.future.set_result(outcome)

    def drain_seconds(self, below: int) -> float:
        """About how long until fewer than ``below`` submits are queued, at the recent pace (bounded by
        :data:`RETRY_AFTER_BOUNDS`)."""
        low, high = RETRY_AFTER_BOUNDS
        return min(high, max(low, (len(self._submits) - below + 1) * self._image_seconds))

    def retry_after(self, client: Hashable) -> float:
        """When a refused submit of ``client`` may be accepted: once half of the queue that refused it
        has been served (its own queue is served at its round-robin share, one turn in as many as
        there are addresses waiting)."""
        if self.max_pending_per_client - self._submits.count(client) <= 0:
            ahead = self._submits.count(client) / 2 * max(1, self._submits.clients)
        else:
            ahead = len(self._submits) / 2
        low, high = RETRY_AFTER_BOUNDS
        return min(high, max(low, ahead * self._image_seconds))

    def _note_arrival(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = min(now - self._last_arrival, MAX_ARRIVAL_GAP)
            self._gap = gap if self._gap is None else self._gap + ARRIVAL_SMOOTHING * (gap - self._gap)
        self._last_arrival = now
