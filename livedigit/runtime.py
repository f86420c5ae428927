"""Run the model on batches of preprocessed digits, behind one small interface.

The server only needs ``predict(batch) -> probabilities``. The default runtime is LiteRT, TensorFlow's
runtime for small CPU models: it imports in a fraction of a second and keeps a process far below a
512 MB dyno, where importing TensorFlow alone takes more. The TensorFlow runtime loads the ``.keras``
model instead; it exists for parity checks and for users who already run TensorFlow.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from livedigit.preprocess import SIZE

CLASSES = 10
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
"""Batch sizes the LiteRT interpreters are allocated for; a batch is padded up to the next bucket."""


class ModelLoadError(RuntimeError):
    """The model file is missing or unreadable; the message names the file and the reason."""


class Runtime(Protocol):
    """What the batcher needs from a model."""

    name: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Map a float32 batch of shape (n, 28, 28), ink = 1.0, to (n, 10) class probabilities."""
        ...


class LiteRTRuntime:
    """A ``.tflite`` model run by LiteRT, with one set of interpreters per calling thread.

    An interpreter is not safe to share between threads, and resizing its input re-plans its memory,
    so each thread lazily builds one interpreter per batch bucket and pads each batch to the bucket.
    """

    name = "litert"

    def __init__(self, path: str | Path, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.num_threads = num_threads
        self._interpreter_class = Interpreter
        try:
            self._model = self.path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read model {self.path}: {exc.strerror}") from None
        self._local = threading.local()
        try:
            self._interpreter(1)
        except ValueError as exc:
            raise ModelLoadError(f"cannot load model {self.path}: not a valid .tflite file ({exc})") from None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        out = np.empty((count, CLASSES), dtype=np.float32)
        largest = BATCH_BUCKETS[-1]
        for start in range(0, count, largest):
            chunk = batch[start : start + largest]
            bucket = next(size for size in BATCH_BUCKETS if size >= len(chunk))
            interpreter = self._interpreter(bucket)
            padded = np.zeros((bucket, SIZE, SIZE, 1), dtype=np.float32)
            padded[: len(chunk), :, :, 0] = chunk
            interpreter.set_tensor(self._local.input_index, padded)
            interpreter.invoke()
            out[start : start + len(chunk)] = interpreter.get_tensor(self._local.output_index)[: len(chunk)]
        return out

    def _interpreter(self, bucket: int):  # type: ignore[no-untyped-def]
        interpreters = getattr(self._local, "interpreters", None)
        if interpreters is None:
            interpreters = self._local.interpreters = {}
        interpreter = interpreters.get(bucket)
        if interpreter is None:
            interpreter = self._interpreter_class(model_content=self._model, num_threads=self.num_threads)
            input_detail = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(input_detail["index"], [bucket, SIZE, SIZE, 1], strict=True)
            interpreter.allocate_tensors()
            self._local.input_index = input_detail["index"]
            self._local.output_index = interpreter.get_output_details()[0]["index"]
            interpreters[bucket] = interpreter
        return interpreter


class TensorFlowRuntime:
    """A ``.keras`` model called through one ``tf.function`` with a free batch dimension.

    ``model.predict`` sets up a data pipeline on every call (tens of milliseconds whatever the batch);
    a traced function with a ``None`` batch dimension is compiled once and then costs only the maths.
    """

    name = "tensorflow"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"cannot read model {self.path}: no such file")
        try:
            import keras
            import tensorflow as tf
        except ImportError:
            raise ModelLoadError("the tensorflow runtime needs TensorFlow: pip install 'livedigit[train]'") from None
        try:
            model = keras.models.load_model(self.path, compile=False)
        except Exception as exc:  # Keras reports a bad archive with many exception types.
            raise ModelLoadError(f"cannot load model {self.path}: {exc}") from None
        self._call = tf.function(
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None, SIZE, SIZE, 1], tf.float32)],
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        images = np.asarray(batch, dtype=np.float32).reshape(-1, SIZE, SIZE, 1)
        return np.asarray(self._call(images), dtype=np.float32)


RUNTIMES = ("litert", "tensorflow")


def load_runtime(path: str | Path, kind: str = "litert", num_threads: int = 1) -> Runtime:
    """Load the model at ``path`` with the runtime named ``kind`` (see :data:`RUNTIMES`).

    ``path`` may name either model file or the model's base name; the runtime picks its extension.
    """
    base = Path(path)
    if base.suffix in (".tflite", ".keras", ".json"):
        base = base.with_suffix("")
    if kind == "litert":
        return LiteRTRuntime(base.with_suffix(".tflite"), num_threads=num_threads)
    if kind == "tensorflow":
        return TensorFlowRuntime(base.with_suffix(".keras"))
    raise ValueError(f"unknown runtime {kind!r}; choose one of {', '.join(RUNTIMES)}")
