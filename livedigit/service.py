"""The state one server process shares between all its connections, and its start and stop.

One :class:`Service` per app holds the settings, the model, the batcher, the label store, the metrics,
the connection counts and the open WebSocket sessions. The WebSocket sessions and the HTTP endpoints both
go through it, so both paths answer the same image with the same reply object.

The label store is opened at start but never waited for: a database that is down, slow or misconfigured
makes labels ``unavailable`` while predictions and ``/readyz`` go on. It is closed last, after every
connection has been answered, so that the labels still waiting are committed before the process exits.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

from livedigit import protocol, wire
from livedigit.batcher import Batcher
from livedigit.config import Settings
from livedigit.garbage import Collections
from livedigit.labels import database
from livedigit.labels.store import COMMIT_GRACE, LabelStore
from livedigit.metrics import Metrics
from livedigit.ratelimit import KeyedBuckets
from livedigit.readpacer import ReadPacer
from livedigit.runtime import ModelLoadError, Runtime
from livedigit.security import ConnectionLimits
from livedigit.verdict import VerdictRule
from livedigit.workers import ModelSpec

T = TypeVar("T")


class Connection(Protocol):
    """What shutdown needs of an open WebSocket session (:class:`livedigit.session.Session`)."""

    closed: asyncio.Event

    def stop_reading(self, deadline: float) -> None: ...


logger = logging.getLogger("livedigit")


class Service:
    """Everything per process; created by :func:`livedigit.app.create_app`, started by its lifespan."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.metrics = Metrics()
        self.runtime = runtime
        self.batcher: Batcher | None = None
        self.connections = ConnectionLimits(settings.max_connections, settings.max_connections_per_client)
        self.http_submits = KeyedBuckets(settings.submit_rate, settings.submit_burst)
        self.address_bytes = KeyedBuckets(settings.address_byte_rate, 2 * settings.max_message_bytes)
        self.reads = ReadPacer(settings.pace_reads_above)
        self.garbage = Collections(settings.collect_after, self.metrics.garbage_collections.observe)
        self.metrics.watch_reads(self.reads)
        self.label_clients = KeyedBuckets(settings.label_rate_per_client, settings.label_burst_per_client)
        self.sessions: set[Connection] = set()
        self.draining = False
        self.model_base = _model_base(settings.model)
        self.model_version = "unknown"
        self.labels: LabelStore | None = None
        self._labels_starting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pacing: asyncio.Task[None] | None = None
        self._collecting: asyncio.Task[None] | None = None
        self._card: dict[str, Any] = {}
        self.metrics.client_addresses.set_function(lambda: self.connections.clients)

    @property
    def ready(self) -> bool:
        return self.batcher is not None and self.batcher.ready and not self.draining

    @property
    def model_name(self) -> str:
        return str(self._card.get("name") or self.model_base.name)

    @property
    def stored_model_name(self) -> str:
        """:attr:`model_name` as a label row can hold it (printable ASCII, no spaces, 128 characters)."""
        return re.sub(r"[^\x21-\x7e]", "_", self.model_name)[:128] or "model"

    @property
    def runtime_name(self) -> str:
        return getattr(self.runtime, "name", self.settings.runtime)

    async def start(self) -> None:
        """Start the batcher, whose workers load the model (a runtime given runs in a thread of this
        process instead). Raises :class:`ModelLoadError`."""
        loop = asyncio.get_running_loop()
        self.metrics.tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        self._open_labels()
        settings = self.settings
        card = _read_card(self.model_base.with_suffix(".json"))
        self._card = card or {}
        batcher = Batcher(
            ModelSpec(settings.model, settings.runtime, settings.threads) if self.runtime is None else self.runtime,
            self.metrics,
            limits=self.limits,
            max_batch=self.settings.max_batch,
            max_wait_ms=self.settings.max_wait_ms,
            max_pending_submits=self.settings.max_pending_submits,
            max_pending_per_client=self.settings.max_pending_submits_per_client,
            submit_share=self.settings.submit_share,
            live_batch_ms=self.settings.live_batch_ms,
            workers=self.settings.model_workers if self.runtime is None else 0,
            inline_below=self.settings.score_inline_below,
            verdict=_verdict_rule(self._card),
        )
        try:
            await batcher.start()
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"model {self.settings.model} failed on a test batch: {exc}") from None
        self.batcher = batcher
        self._pacing = asyncio.create_task(self.reads.run(), name="livedigit-read-pacer")
        if card is None:
            logger.warning(
                "no usable model card at %s; /api/model will show no accuracies", self.model_base.with_suffix(".json")
            )
        self.model_version = await asyncio.to_thread(model_version, self.model_base)
        # Everything loaded so far (modules, settings, the model and its runtime) lives as long as the process.
        # Frozen, it is never scanned again, so a full collection only walks what connections allocate
        # (19 ms -> 1.2 ms for the full collections of a 100-client run).
        gc.collect()
        gc.freeze()
        self._collecting = asyncio.create_task(self.garbage.run(), name="livedigit-garbage")
        logger.info("model %s loaded with %s; serving", self.model_name, self.runtime_name)

    async def stop(self) -> None:
        """Stop the batcher, then commit the labels still waiting and close the store."""
        for task in (self._pacing, self._collecting):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.batcher is not None:
            await self.batcher.stop()
        await self._close_labels()

    def spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` (a label being stored) as a task that outlives its connection: a label sent just
        before the client left is still committed, and :meth:`stop` waits for it."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _open_labels(self) -> None:
        """Open the label store and start it in the background (its first connection may take seconds)."""
        settings = self.settings
        target = database.locate(settings.database_url, settings.data_dir)
        try:
            store = LabelStore.open(target, timeout=settings.label_timeout)
        except Exception as exc:  # a bad URL or an unwritable folder: predictions go on, labels are refused
            logger.error("labels cannot be stored (every label is answered 'unavailable'): %s", exc)
            return
        self.labels = store
        self.metrics.watch_labels(store)
        self._labels_starting = asyncio.create_task(store.start())
        logger.info("labels are stored in %s", store.description)

    async def _close_labels(self) -> None:
        store = self.labels
        if store is None:
            return
        starting = self._labels_starting
        if starting is not None and not starting.done():
            starting.cancel()
        if starting is not None:
            await asyncio.gather(starting, return_exceptions=True)
        await store.close()
        if self._tasks:  # resolved by the close, or by their own timeout if the database never answered
            await asyncio.wait(set(self._tasks), timeout=store.timeout + COMMIT_GRACE)

    async def drain(self, timeout: float) -> None:
        """Stop reading from every WebSocket, answer what they already sent, close them with 1001.

        Returns when every session has ended or after ``timeout`` seconds, whichever is first; sessions
        still writing then are closed without waiting further.
        """
        self.draining = True
        sessions = list(self.sessions)
        if not sessions:
            return
        started = time.monotonic()
        deadline = started + timeout
        for session in sessions:
            session.stop_reading(deadline)
        await asyncio.wait([asyncio.ensure_future(session.closed.wait()) for session in sessions], timeout=timeout)
        logger.info("closed %d WebSocket connection(s) in %.2f s", len(sessions), time.monotonic() - started)

    def limits_info(self) -> dict[str, Any]:
        """The limits a client should respect, as sent in ``hello`` and ``/api/model``."""
        settings = self.settings
        return {
            "max_message_bytes": settings.max_message_bytes,
            "max_side": settings.max_side,
            "max_png_bytes": settings.max_png_bytes,
            "max_strokes": settings.max_strokes,
            "max_points": settings.max_points,
            "snapshot_rate": settings.snapshot_rate,
            "snapshot_burst": settings.snapshot_burst,
            "submit_rate": settings.submit_rate,
            "submit_burst": settings.submit_burst,
            "busy_submits": settings.busy_submits,
            "max_batch_items": settings.max_batch_items,
            "max_pending_submits": settings.max_pending_submits,
            "max_pending_submits_per_client": settings.max_pending_submits_per_client,
            "max_bad_messages": settings.max_bad_messages,
            "message_rate": settings.message_rate,
            "address_byte_rate": settings.address_byte_rate,
            "max_connections_per_client": settings.max_connections_per_client,
            "label_rate": settings.label_rate,
            "label_burst": settings.label_burst,
            "label_rate_per_client": settings.label_rate_per_client,
            "label_burst_per_client": settings.label_burst_per_client,
        }

    def hello(self) -> dict[str, Any]:
        return protocol.hello(self.model_name, self.runtime_name, self.limits_info())

    def model_info(self) -> dict[str, Any]:
        """What ``GET /api/model`` answers."""
        card = self._card
        accuracy = card.get("accuracy") if isinstance(card.get("accuracy"), dict) else None
        return {
            "name": self.model_name,
            "version": self.model_version,
            "runtime": self.runtime_name,
            "protocol": wire.VERSION,
            "input_forms": list(wire.INPUT_FORMS),
            "limits": self.limits_info(),
            "accuracy": None
            if accuracy is None
            else {
                key: value
                for key, value in accuracy.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            },
            "parameters": card.get("parameters") if isinstance(card.get("parameters"), int) else None,
            "card": bool(card),
        }


def _read_card(path: Path) -> dict[str, Any] | None:
    """The model card, or ``None`` when it is missing or unreadable: the card is information, not a need."""
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def _verdict_rule(card: dict[str, Any]) -> VerdictRule:
    """The card's verdict rule; the default (every prediction a ``digit``) when it has none or a bad one."""
    try:
        return VerdictRule.from_card(card)
    except ValueError as exc:
        logger.warning("%s; every prediction's verdict will be 'digit'", exc)
        return VerdictRule()


def model_version(base: Path) -> str:
    """The model's version as labels record it: the first 12 hex digits of the SHA-256 of ``<base>.tflite``.

    A hash of the served file names exactly the weights that answered, where the card's ``git_commit``
    names only the training code (two runs of one commit differ). The ``.tflite`` is hashed whichever
    runtime serves: it is the ``.keras`` beside it, exported from the same weights and quantized to 8 bits
    (``train/quantize.py``; the card's ``quantization`` says how often the two name the same digit), so
    both runtimes record one model under one version; the ``.keras`` is hashed when there is no ``.tflite``.
    """
    for suffix in (".tflite", ".keras"):
        try:
            return hashlib.sha256(base.with_suffix(suffix).read_bytes()).hexdigest()[:12]
        except OSError:
            continue
    return "unknown"


def _model_base(model: str) -> Path:
    base = Path(model)
    return base.with_suffix("") if base.suffix in (".tflite", ".keras", ".json") else base
