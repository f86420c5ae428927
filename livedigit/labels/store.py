"""Keep corrections durably without ever making the event loop wait for the database.

:class:`LabelStore` owns one writer thread. :meth:`LabelStore.add` validates and encodes a
:class:`Label` on the event loop (cheap), puts it in a bounded queue and waits for its future; the writer
takes everything queued (up to ``max_batch`` rows), inserts it in one transaction and commits once, then
resolves the futures. Concurrent adds therefore share a commit (group commit): the cost of a durable commit
(an fsync on SQLite, a round trip and a WAL flush on PostgreSQL) is paid once per batch, not per row.

Why SQLAlchemy Core with synchronous drivers in a thread rather than async drivers: SQLite has no
asynchronous interface at all (aiosqlite is itself a thread), a single writer is what SQLite allows anyway
and what makes batching natural, and the sync drivers (stdlib ``sqlite3``, psycopg 3) are the most
exercised ones. One thread also keeps the connection count per process fixed (Heroku Postgres plans
count connections). Measured write latency and throughput are in ``docs/operations.md``.

Guarantees:

- ``add`` returns a label id only once the row is committed. A row is committed at most once: each has
  a key (random, or the client's), unique per writer, and inserting a key again returns the first id, so
  a client may safely retry with the same key.
- ``add`` waits at most ``timeout`` seconds, then raises :class:`StorageUnavailable`; so does a full
  queue (``max_pending`` rows or ``max_pending_bytes``) and a database known to be down, at once. A row
  reported unavailable is not stored: the writer inserts a batch, then, before it commits, withdraws the
  rows whose ``add`` gave up (rolling back and inserting the others again), and the database aborts a
  transaction that outlives the earliest deadline in it. The one exception is a row whose COMMIT was
  already sent: its ``add`` waits up to :data:`COMMIT_GRACE` more for the answer, and only when that
  does not come (the database vanished at that moment) is it reported unavailable though it may be
  stored; a retry with the same key is then safe.
- When the database fails, the writer retries with a growing delay (at most :data:`MAX_BACKOFF`) and
  probes it while idle; writes resume by themselves when it answers again.
- :meth:`LabelStore.close` lets the writer commit every row still waiting before it returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from livedigit import threadnames
from livedigit.labels import database
from livedigit.preprocess import Pixels, PreprocessError, Strokes, ink_from_pixels

logger = logging.getLogger("livedigit.labels")

WRITER_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
"""A browser's random id, also the form of a row's key: 8 to 64 characters of ``[A-Za-z0-9_-]``."""

VERDICT = re.compile(r"[a-z][a-z0-9_-]{0,31}")
"""A verdict word as the server sends it (lower case, at most 32 characters)."""

MODEL_FIELD = re.compile(r"[\x21-\x7e]{1,128}")
"""Model name and version: 1 to 128 printable ASCII characters without spaces."""

MAX_DRAWING_BYTES = 1 << 20
"""Largest drawing a row may hold: strokes as JSON text, or raster bytes."""

MAX_SUBMIT_ID = 64
"""Longest submit id kept (as text), the protocol's ``id`` limit."""

MAX_BACKOFF = 2.0
"""Longest pause between two attempts to reach a database that failed."""

MIN_ATTEMPT = 0.05
"""A row with less time than this left before its ``add`` gives up is not sent: it could not commit in time."""

COMMIT_GRACE = 1.0
"""How much longer than ``timeout`` an ``add`` waits when its row's COMMIT is already on its way."""


class StorageError(Exception):
    """The database refused a row that passed validation (a defect, not the client's fault)."""


class StorageUnavailable(StorageError):
    """The database is slow, down or behind on writes; nothing was stored, and retrying later is safe."""


class InvalidLabel(ValueError):
    """A label that cannot be stored; the message says which field is wrong."""


@dataclass(frozen=True)
class Label:
    """One correction: the drawing, the true digit, and what the model had answered.

    ``drawing`` is the drawing as the client sent it: :class:`~livedigit.preprocess.Strokes` in screen
    coordinates (with ``surface`` when sent) or :class:`~livedigit.preprocess.Pixels` (uint8, or float
    0..1 which is stored as uint8); a PNG is stored as its decoded pixels. ``predicted`` is ``None`` when
    the model saw no digit. ``submit_id`` is the id of the submit it corrects, ``key`` the client's
    idempotency key (a random one when ``None``).
    """

    drawing: Strokes | Pixels
    digit: int
    writer: str
    model_name: str
    model_version: str
    predicted: int | None
    probabilities: Sequence[float] | None
    verdict: str | None = None
    submit_id: int | str | None = None
    key: str | None = None

    def row(self) -> dict[str, Any]:
        """The label's columns (all but ``created``), validated; raises :class:`InvalidLabel`."""
        _check_digit("digit", self.digit)
        if self.predicted is not None:
            _check_digit("predicted", self.predicted)
        _check(isinstance(self.writer, str) and WRITER_ID.fullmatch(self.writer), "writer must be 8-64 [A-Za-z0-9_-]")
        key = secrets.token_urlsafe(16) if self.key is None else self.key
        _check(isinstance(key, str) and WRITER_ID.fullmatch(key), "key must be 8-64 [A-Za-z0-9_-]")
        for name in ("model_name", "model_version"):
            value = getattr(self, name)
            _check(isinstance(value, str) and MODEL_FIELD.fullmatch(value), f"{name} must be 1-128 printable ASCII")
        _check(
            self.verdict is None or (isinstance(self.verdict, str) and VERDICT.fullmatch(self.verdict)),
            "verdict must be a lower-case word of at most 32 characters, or null",
        )
        return {
            "writer": self.writer,
            "key": key,
            "label": self.digit,
            **_drawing_columns(self.drawing),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "predicted": self.predicted,
            "probabilities": _probabilities_json(self.probabilities),
            "verdict": self.verdict,
            "submit_id": _submit_id_text(self.submit_id),
        }


@dataclass(frozen=True)
class ModelStats:
    """How people judged one model version's answers: confirmed (label = answer) or corrected."""

    model_name: str
    model_version: str
    confirmed: int
    corrected: int

    @property
    def answers(self) -> int:
        return self.confirmed + self.corrected

    @property
    def accuracy(self) -> float | None:
        """The accuracy people see: confirmed answers over all judged answers (``None`` before any)."""
        return self.confirmed / self.answers if self.answers else None


def read_stats(connection: Connection) -> list[ModelStats]:
    """Confirmed and corrected answers per model name and version (uses the ``labels_model`` index)."""
    table = database.labels
    confirmed = sa.func.sum(sa.case((table.c.label == table.c.predicted, 1), else_=0))
    query = (
        sa.select(table.c.model_name, table.c.model_version, sa.func.count(), confirmed)
        .group_by(table.c.model_name, table.c.model_version)
        .order_by(table.c.model_name, table.c.model_version)
    )
    return [
        ModelStats(name, version, int(good or 0), int(total) - int(good or 0))
        for name, version, total, good in connection.execute(query)
    ]


@dataclass(eq=False)
class _Pending:
    """A row on its way to the database, and the future its ``add`` waits on."""

    row: dict[str, Any]
    size: int
    deadline: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[int]
    state: Literal["queued", "writing", "committing", "done", "failed", "abandoned"] = "queued"
    label_id: int | None = None
    error: BaseException | None = None


@dataclass
class _Health:
    """The writer's view of the database, for fail-fast adds and for logging only state changes."""

    migrated: bool = False
    available: bool = False
    failures: int = 0
    down_since: float | None = None
    first_attempt: threading.Event = field(default_factory=threading.Event)


class LabelStore:
    """Durable storage of labels behind a bounded queue and one writer thread (see the module doc).

    ``commits`` and ``rows_committed`` count the writer's transactions and the rows they stored (a
    retried key counts again); their ratio is the batching that concurrent adds get.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        timeout: float = 3.0,
        max_pending: int = 1024,
        max_pending_bytes: int = 16 << 20,
        max_batch: int = 256,
    ) -> None:
        self.engine = engine
        self.timeout = timeout
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.max_batch = max_batch
        self._insert = _insert_statement(engine.dialect.name)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[_Pending] = deque()
        self._bytes = 0
        self._closing = False
        self._health = _Health()
        self._thread: threading.Thread | None = None
        self.commits = 0
        self.rows_committed = 0

    @classmethod
    def open(cls, target: str | Path, **options: Any) -> LabelStore:
        """A store for a database URL (``postgres://``, ``postgresql://``, ``sqlite:///``) or a SQLite file
        path; ``options`` are :class:`LabelStore`'s keyword arguments. Nothing is connected before
        :meth:`start`."""
        timeout = float(options.get("timeout", 3.0))
        return cls(database.create_engine(target, pool_timeout=timeout), **options)

    @property
    def description(self) -> str:
        """The database's URL without its password, for logs."""
        return database.describe(self.engine.url)

    @property
    def available(self) -> bool:
        """False while the database is known to be down (``add`` then fails at once)."""
        return self._health.available

    @property
    def pending(self) -> int:
        """Rows waiting for the database (queued or being written), at most ``max_pending``."""
        return len(self._queue)

    async def start(self) -> None:
        """Start the writer, which migrates the schema first; returns once that has succeeded or failed once.

        A database that is down at start is not fatal: the writer keeps trying, and :meth:`add` raises
        :class:`StorageUnavailable` until it succeeds.
        """
        if self._thread is not None:
            raise RuntimeError("the label store is already started")
        self._thread = threading.Thread(target=self._run, name=threadnames.LABELS, daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._health.first_attempt.wait, self.timeout + 2 * database.CONNECT_TIMEOUT)

    async def add(self, label: Label) -> int:
        """Store ``label`` and return its id once committed.

        Raises :class:`InvalidLabel` for a label that cannot be stored, :class:`StorageUnavailable` when it
        could not be committed within ``timeout`` (nothing stored; retry later).
        """
        row = label.row()
        row["created"] = datetime.now(UTC)
        size = len(row["strokes"] or "") + len(row["pixels"] or b"") + 512
        loop = asyncio.get_running_loop()
        pending = _Pending(row, size, time.monotonic() + self.timeout, loop, loop.create_future())
        with self._wake:
            if self._closing or self._thread is None:
                raise StorageUnavailable("the label store is not running")
            if not self._health.available:
                raise StorageUnavailable("the labels database is unavailable; retry later")
            if len(self._queue) >= self.max_pending or self._bytes + size > self.max_pending_bytes:
                raise StorageUnavailable("too many labels are waiting for the database; retry later")
            self._queue.append(pending)
            self._bytes += size
            self._wake.notify()
        try:
            done, _ = await asyncio.wait({pending.future}, timeout=self.timeout)
            if not done and self._committing(pending):
                done, _ = await asyncio.wait({pending.future}, timeout=COMMIT_GRACE)
        except asyncio.CancelledError:
            self._give_up(pending)
            raise
        if done:
            return pending.future.result()
        state = self._give_up(pending)
        if state == "done" and pending.label_id is not None:  # committed just now
            return pending.label_id
        if state == "failed" and pending.error is not None:
            raise pending.error
        raise StorageUnavailable(f"the labels database did not commit within {self.timeout:g} s; retry later")

    async def stats(self) -> list[ModelStats]:
        """Confirmed and corrected answers per model version, read from the database (all processes)."""

        def read() -> list[ModelStats]:
            with self.engine.connect() as connection, connection.begin():
                database.limit_time(connection, self.timeout)
                return read_stats(connection)

        try:
            return await asyncio.wait_for(asyncio.to_thread(read), self.timeout + 1.0)
        except (TimeoutError, sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
            logger.warning("could not read label statistics from %s: %s", self.description, exc)
            raise StorageUnavailable("the labels database is unavailable; retry later") from None

    async def close(self) -> None:
        """Commit every row still waiting, stop the writer and close the connections.

        Waits at most as long as those rows' ``add`` calls would (``timeout``, plus a connection attempt).
        """
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, self.timeout + database.CONNECT_TIMEOUT + 1.0)
            if self._thread.is_alive():
                logger.error("the labels writer did not finish; %d rows were not committed", len(self._queue))
        self.engine.dispose()

    def _committing(self, pending: _Pending) -> bool:
        with self._lock:
            return pending.state == "committing"

    def _give_up(self, pending: _Pending) -> str:
        """Withdraw a row whose ``add`` stopped waiting, unless it was settled meanwhile; its final state."""
        with self._lock:
            if pending.state in ("done", "failed"):
                return pending.state
            if pending.state == "queued":
                self._queue.remove(pending)
                self._bytes -= pending.size
            pending.state = "abandoned"
            return pending.state

    # The writer thread.

    def _run(self) -> None:
        threadnames.name_this_thread(threadnames.LABELS)
        try:
            self._loop()
        except Exception:
            logger.exception("the labels writer stopped; labels are refused until the server restarts")
            with self._lock:
                self._health.available = False
            self._health.first_attempt.set()

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                if not self._health.migrated:
                    database.migrate(self.engine)
                    self._health.migrated = True
                elif batch:
                    self._write(batch)
                else:
                    with self.engine.connect() as connection:
                        connection.execute(sa.select(1))
            except Exception as exc:
                if batch and not _is_unavailable(exc):
                    self._refuse(batch, exc)
                    continue
                self._failed(batch, exc)
            else:
                self._succeeded()

    def _take(self) -> list[_Pending] | None:
        """The next rows to write ([] to probe a database that failed); ``None`` once closed and empty."""
        with self._wake:
            while True:
                now = time.monotonic()
                while self._queue and self._queue[0].deadline < now + MIN_ATTEMPT:
                    expired = self._queue.popleft()
                    expired.state = "abandoned"
                    self._bytes -= expired.size
                if self._queue and self._health.migrated:
                    count = min(len(self._queue), self.max_batch)
                    batch = [self._queue[index] for index in range(count)]
                    for pending in batch:
                        pending.state = "writing"
                    return batch
                if self._closing and not self._queue:
                    return None
                if not self._health.available or not self._health.migrated:
                    return []
                self._wake.wait()

    def _write(self, batch: list[_Pending]) -> None:
        """Insert ``batch`` in one transaction and commit it, unless one of its rows was withdrawn meanwhile:
        then roll back and leave the others queued, to be inserted again without it."""
        budget = min(pending.deadline for pending in batch) - time.monotonic()
        rows = [pending.row for pending in batch]
        with self.engine.connect() as connection, connection.begin() as transaction:
            database.limit_time(connection, budget)
            ids = {(writer, key): label_id for label_id, writer, key in connection.execute(self._insert, rows)}
            missing = [(row["writer"], row["key"]) for row in rows if (row["writer"], row["key"]) not in ids]
            if missing:  # keys stored before: a client's retry
                table = database.labels
                query = sa.select(table.c.id, table.c.writer, table.c.key).where(
                    sa.tuple_(table.c.writer, table.c.key).in_(missing)
                )
                ids.update({(writer, key): label_id for label_id, writer, key in connection.execute(query)})
            if len(ids) < len({(row["writer"], row["key"]) for row in rows}):
                raise StorageError("a label's row was neither inserted nor found")
            with self._lock:
                withdrawn = [pending for pending in batch if pending.state == "abandoned"]
                for pending in batch:
                    if withdrawn:
                        self._requeue(pending)
                    else:
                        pending.state = "committing"
            if withdrawn:
                transaction.rollback()
                return
        with self._lock:
            self.commits += 1
            self.rows_committed += len(batch)
            for pending in batch:
                pending.label_id = ids[(pending.row["writer"], pending.row["key"])]
                if pending.state == "abandoned":
                    logger.info("a label was committed after its sender had been told it was not")
                pending.state = "done"
                self._queue.remove(pending)
                self._bytes -= pending.size
        _resolve(batch)

    def _requeue(self, pending: _Pending) -> None:
        """After a failed or withdrawn attempt: the row waits again, or leaves if its ``add`` gave up.
        A row whose commit failed goes back too: inserting it again is harmless (its key is unique)."""
        if pending.state == "abandoned":
            self._queue.remove(pending)
            self._bytes -= pending.size
        elif pending.state in ("writing", "committing"):
            pending.state = "queued"

    def _refuse(self, batch: list[_Pending], exc: BaseException) -> None:
        """The database refused the batch for a reason other than being unreachable: find the row at
        fault by writing the rows one at a time, so one bad row cannot fail the others."""
        if len(batch) > 1:
            for pending in batch:
                try:
                    self._write([pending])
                except Exception as single:
                    if _is_unavailable(single):
                        self._failed([pending], single)
                    else:
                        self._refuse([pending], single)
            return
        logger.error("the labels database refused a row: %s", exc)
        with self._lock:
            for pending in batch:
                self._queue.remove(pending)
                self._bytes -= pending.size
                pending.state = "failed"
                pending.error = StorageError("the labels database refused this label")
        _resolve(batch)

    def _failed(self, batch: list[_Pending], exc: BaseException) -> None:
        health = self._health
        health.failures += 1
        health.first_attempt.set()
        with self._lock:
            for pending in batch:
                self._requeue(pending)
            if health.failures >= 2 and health.available:
                health.available = False
                health.down_since = time.monotonic()
                logger.warning("labels database %s unavailable: %s", self.description, _one_line(exc))
            elif not health.migrated and health.failures == 1:
                logger.warning("labels database %s cannot be used yet: %s", self.description, _one_line(exc))
            # The first failure is retried at once: it is usually a connection the database closed
            # (a restart), and the pool has just replaced it.
            delay = 0.0 if health.failures == 1 else min(MAX_BACKOFF, 0.05 * 2**health.failures)
            self._wake.wait(delay * random.uniform(0.5, 1.0) if delay else 0.0)

    def _succeeded(self) -> None:
        health = self._health
        if not health.available:
            if health.down_since is not None:
                logger.warning(
                    "labels database %s available again after %.1f s",
                    self.description,
                    time.monotonic() - health.down_since,
                )
            with self._lock:
                health.available = True
                health.down_since = None
        health.failures = 0
        health.first_attempt.set()


def _resolve(batch: list[_Pending]) -> None:
    """Hand each row's outcome to its event loop, one call per loop."""
    loops: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
    for pending in batch:
        loops.setdefault(pending.loop, []).append(pending)
    for loop, group in loops.items():
        try:
            loop.call_soon_threadsafe(_settle, group)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _settle(group: list[_Pending]) -> None:
    for pending in group:
        if pending.future.done():
            continue
        if pending.error is not None:
            pending.future.set_exception(pending.error)
        elif pending.label_id is not None:
            pending.future.set_result(pending.label_id)


def _is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means "the database cannot be reached or is too slow" (retry) rather than "this
    row is refused"."""
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))
    return isinstance(exc, (sa.exc.TimeoutError, OSError))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _insert_statement(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (writer, key) DO NOTHING RETURNING id, writer, key, for either database."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = database.labels
    return (
        insert(table)
        .on_conflict_do_nothing(index_elements=[table.c.writer, table.c.key])
        .returning(table.c.id, table.c.writer, table.c.key)
    )


def _check(condition: object, message: str) -> None:
    if not condition:
        raise InvalidLabel(message)


def _check_digit(name: str, value: object) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9, f"{name} must be 0-9")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _drawing_columns(drawing: object) -> dict[str, Any]:
    columns: dict[str, Any] = dict.fromkeys(
        ("strokes", "surface_width", "surface_height", "pixels", "pixels_width", "pixels_height")
    )
    if isinstance(drawing, Strokes):
        columns["strokes"] = _strokes_json(drawing.strokes)
        if drawing.surface is not None:
            width, height = drawing.surface
            _check(_number(width) and _number(height) and width > 0 and height > 0, "surface must be two sides > 0")
            columns["surface_width"], columns["surface_height"] = float(width), float(height)
        return columns
    if isinstance(drawing, Pixels):
        array = drawing.array
        if not (isinstance(array, np.ndarray) and array.dtype == np.uint8):
            try:
                array = np.rint(ink_from_pixels(array) * 255.0).astype(np.uint8)
            except PreprocessError as exc:
                raise InvalidLabel(str(exc)) from None
        _check(array.ndim == 2 and min(array.shape) >= 1, "pixels must be a 2-D raster")
        _check(array.size <= MAX_DRAWING_BYTES, f"pixels hold more than {MAX_DRAWING_BYTES} bytes")
        columns["pixels"] = np.ascontiguousarray(array).tobytes()
        columns["pixels_height"], columns["pixels_width"] = array.shape
        return columns
    raise InvalidLabel("drawing must be Strokes or Pixels")


def _strokes_json(strokes: object) -> str:
    """The strokes as compact JSON, written from the validated numbers (so ``true`` cannot pass for 1).

    Checked with numpy, one array per stroke: a 1,024-point drawing costs about 0.8 ms here, most of it
    JSON's float formatting; a typical 40-point one about 40 us.
    """
    message = "strokes must be a list of strokes, each a list of [x, y] finite numbers"
    _check(isinstance(strokes, (list, tuple)), message)
    assert isinstance(strokes, (list, tuple))
    checked = []
    for stroke in strokes:
        _check(isinstance(stroke, (list, tuple)), message)
        try:
            array = np.asarray(stroke) if stroke else np.zeros((0, 2))
        except (ValueError, TypeError, OverflowError):
            raise InvalidLabel(message) from None
        _check(array.ndim == 2 and array.shape[1] == 2 and array.dtype.kind in "iuf", message)
        _check(np.isfinite(array).all(), message)
        checked.append(array.tolist())
    _check(any(checked), "strokes must hold at least one point")
    text = json.dumps(checked, separators=(",", ":"))
    _check(len(text) <= MAX_DRAWING_BYTES, f"strokes take more than {MAX_DRAWING_BYTES} bytes")
    return text


def _probabilities_json(probabilities: Sequence[float] | None) -> str | None:
    if probabilities is None:
        return None
    values = list(probabilities) if isinstance(probabilities, (list, tuple, np.ndarray)) else []
    _check(
        len(values) == 10 and all(_number(float(p)) and 0.0 <= float(p) <= 1.0 for p in values),
        "probabilities must be ten numbers in 0..1",
    )
    return json.dumps([round(float(p), 6) for p in values], separators=(",", ":"))


def _submit_id_text(submit_id: int | str | None) -> str | None:
    if submit_id is None:
        return None
    if isinstance(submit_id, int) and not isinstance(submit_id, bool):
        return str(submit_id)
    _check(isinstance(submit_id, str) and len(submit_id) <= MAX_SUBMIT_ID, "submit_id must be an id of the protocol")
    return str(submit_id)
