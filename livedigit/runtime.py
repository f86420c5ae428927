"""Run the model on batches of preprocessed digits, behind one small interface.

The server only needs ``predict(batch, paths) -> probabilities``. The default runtime is LiteRT, TensorFlow's
runtime for small CPU models: it imports in a fraction of a second and keeps a process far below a
512 MB dyno, where importing TensorFlow alone takes more. The TensorFlow runtime loads the ``.keras``
model instead; it exists for parity checks and for users who already run TensorFlow.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np

from livedigit.preprocess import PATH_FEATURES, PATH_POINTS, SIZE

CLASSES = 10
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
"""Batch sizes the LiteRT interpreters are allocated for; a batch is split into chunks of these sizes."""


class ModelLoadError(RuntimeError):
    """The model file is missing or unreadable; the message names the file and the reason."""


class Runtime(Protocol):
    """What the batcher needs from a model."""

    name: str
    reads_path: bool
    """Whether the model takes the pen's path beside the image (:func:`livedigit.preprocess.pen_path`)."""

    def predict(self, batch: np.ndarray, paths: np.ndarray | None = None) -> np.ndarray:
        """Map a float32 batch of shape (n, 28, 28), ink = 1.0, and the pen's paths (n, 32, 4) if the model
        reads them (``None``: no drawing has one), to (n, 10) class probabilities."""
        ...


IMAGE_SHAPE = (SIZE, SIZE, 1)
PATH_SHAPE = (PATH_POINTS, PATH_FEATURES)


def _as_batch(batch: np.ndarray) -> np.ndarray:
    """The batch as a C-contiguous float32 (n, 28, 28, 1) array; a wrong shape is a caller bug."""
    images = np.asarray(batch, dtype=np.float32)
    if images.ndim != 3 or images.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"predict expects a batch of shape (n, {SIZE}, {SIZE}), got {images.shape}")
    return np.ascontiguousarray(images).reshape(-1, *IMAGE_SHAPE)


def _as_paths(paths: np.ndarray | None, count: int) -> np.ndarray:
    """The paths as a C-contiguous float32 (n, 32, 4) array, zeros (no path) for ``None``."""
    if paths is None:
        return np.zeros((count, *PATH_SHAPE), np.float32)
    found = np.ascontiguousarray(paths, dtype=np.float32)
    if found.shape != (count, *PATH_SHAPE):
        raise ValueError(f"predict expects paths of shape ({count}, {PATH_POINTS}, {PATH_FEATURES}), got {found.shape}")
    return found


def _inputs(shapes: list[tuple[int, ...]]) -> tuple[int, int | None] | None:
    """Which of a model's inputs is the image and which the path (``None`` if it reads none), from their
    shapes without the batch dimension; ``None`` if they are not a digit model's."""
    if shapes == [IMAGE_SHAPE]:
        return 0, None
    if sorted(shapes) == sorted([IMAGE_SHAPE, PATH_SHAPE]):
        return shapes.index(IMAGE_SHAPE), shapes.index(PATH_SHAPE)
    return None


EXPECTED = (
    f"a digit model maps float32 (n, {SIZE}, {SIZE}, 1), and optionally the pen's path "
    f"(n, {PATH_POINTS}, {PATH_FEATURES}), to (n, {CLASSES})"
)


class LiteRTRuntime:
    """A ``.tflite`` model run by LiteRT, with one set of interpreters per calling thread.

    An interpreter is not safe to share between threads, and resizing its input re-plans its memory, so
    each thread lazily builds one interpreter per size in :data:`BATCH_BUCKETS`, each allocated once. A
    batch is cut into bucket-sized chunks (70 = 64 + 4 + 2) rather than padded up to a bucket: the cost
    per sample is the same at every batch size, so padding would be pure waste and an extra call costs
    microseconds. ``num_threads`` is passed to every interpreter (XNNPACK's thread pool, per interpreter).
    """

    name = "litert"

    def __init__(self, path: str | Path, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        if num_threads < 1:
            raise ValueError(f"num_threads must be at least 1, got {num_threads}")
        self.path = Path(path)
        self.num_threads = num_threads
        self._interpreter_class = Interpreter
        try:
            self._model = self.path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read model {self.path}: {exc.strerror or exc}") from None
        if not self._model:
            raise ModelLoadError(f"cannot load model {self.path}: the file is empty")
        self._local = threading.local()
        try:
            probe = self._interpreter_class(model_content=self._model, num_threads=num_threads)
            input_detail, output_detail = probe.get_input_details(), probe.get_output_details()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load model {self.path}: not a valid .tflite file ({exc})") from None
        shapes = [tuple(int(side) for side in d["shape_signature"][1:]) for d in input_detail + output_detail]
        dtypes = [d["dtype"] for d in input_detail + output_detail]
        found = _inputs(shapes[: len(input_detail)])
        if (
            found is None
            or len(output_detail) != 1
            or shapes[-1] != (CLASSES,)
            or any(dtype != np.float32 for dtype in dtypes)
        ):
            raise ModelLoadError(
                f"cannot load model {self.path}: it maps {shapes[: len(input_detail)]} to "
                f"{shapes[len(input_detail) :]}; {EXPECTED}"
            )
        self._input_index = input_detail[found[0]]["index"]
        self._path_index = None if found[1] is None else input_detail[found[1]]["index"]
        self.reads_path = self._path_index is not None
        self._output_index = output_detail[0]["index"]
        try:
            self._interpreter(1)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load model {self.path}: {exc}") from None

    def predict(self, batch: np.ndarray, paths: np.ndarray | None = None) -> np.ndarray:
        images = _as_batch(batch)
        drawn = _as_paths(paths, len(images)) if self._path_index is not None else None
        out = np.empty((len(images), CLASSES), dtype=np.float32)
        start = 0
        while start < len(images):
            bucket = max(size for size in BATCH_BUCKETS if size <= len(images) - start)
            interpreter = self._interpreter(bucket)
            interpreter.set_tensor(self._input_index, images[start : start + bucket])
            if drawn is not None:
                interpreter.set_tensor(self._path_index, drawn[start : start + bucket])
            interpreter.invoke()
            out[start : start + bucket] = interpreter.get_tensor(self._output_index)
            start += bucket
        return out

    def _interpreter(self, bucket: int):  # type: ignore[no-untyped-def]
        interpreters = getattr(self._local, "interpreters", None)
        if interpreters is None:
            interpreters = self._local.interpreters = {}
        interpreter = interpreters.get(bucket)
        if interpreter is None:
            interpreter = self._interpreter_class(model_content=self._model, num_threads=self.num_threads)
            interpreter.resize_tensor_input(self._input_index, [bucket, *IMAGE_SHAPE], strict=True)
            if self._path_index is not None:
                interpreter.resize_tensor_input(self._path_index, [bucket, *PATH_SHAPE], strict=True)
            interpreter.allocate_tensors()
            interpreters[bucket] = interpreter
        return interpreter


class TensorFlowRuntime:
    """A ``.keras`` model called through one ``tf.function`` with a free batch dimension.

    ``model.predict`` sets up a data pipeline on every call (tens of milliseconds whatever the batch);
    a traced function with a ``None`` batch dimension is compiled once and then costs only the maths.
    TensorFlow's thread pools belong to the process and are fixed when it first runs an operation, so
    ``num_threads`` only applies to the first runtime of a process; later ones warn if it differs.
    """

    name = "tensorflow"

    def __init__(self, path: str | Path, num_threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"cannot read model {self.path}: no such file")
        try:
            import keras
            import tensorflow as tf
        except ImportError:
            raise ModelLoadError("the tensorflow runtime needs TensorFlow: pip install 'livedigit[train]'") from None
        if num_threads is not None:
            _set_tensorflow_threads(tf, num_threads)
        try:
            model = keras.models.load_model(self.path, compile=False)
        except Exception as exc:  # Keras reports a bad archive with many exception types.
            raise ModelLoadError(f"cannot load model {self.path}: {exc}") from None
        found = _inputs([tuple(tensor.shape[1:]) for tensor in model.inputs])
        if found is None or tuple(model.output_shape[1:]) != (CLASSES,):
            raise ModelLoadError(
                f"cannot load model {self.path}: it maps {[tuple(t.shape) for t in model.inputs]} to "
                f"{model.output_shape}; {EXPECTED}"
            )
        image_at, path_at = found
        self.reads_path = path_at is not None
        image_spec = tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32)
        if path_at is None:
            self._call = tf.function(lambda images: model(images, training=False), input_signature=[image_spec])
        else:
            self._call = tf.function(
                lambda images, paths: model([images, paths] if image_at == 0 else [paths, images], training=False),
                input_signature=[image_spec, tf.TensorSpec([None, *PATH_SHAPE], tf.float32)],
            )

    def predict(self, batch: np.ndarray, paths: np.ndarray | None = None) -> np.ndarray:
        images = _as_batch(batch)
        if not len(images):  # TensorFlow's fused CPU kernels reject an empty batch.
            return np.empty((0, CLASSES), dtype=np.float32)
        if self.reads_path:
            return np.asarray(self._call(images, _as_paths(paths, len(images))), dtype=np.float32)
        return np.asarray(self._call(images), dtype=np.float32)


def _set_tensorflow_threads(tf, num_threads: int) -> None:  # type: ignore[no-untyped-def]
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    threading_config = tf.config.threading
    try:
        threading_config.set_intra_op_parallelism_threads(num_threads)
        threading_config.set_inter_op_parallelism_threads(num_threads)
    except RuntimeError:  # TensorFlow already started in this process; its pools cannot change.
        current = threading_config.get_intra_op_parallelism_threads()
        if current != num_threads:
            warnings.warn(
                f"TensorFlow already runs with {current or 'default'} intra-op threads; "
                f"num_threads={num_threads} applies only to the first runtime of a process",
                RuntimeWarning,
                stacklevel=3,
            )


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
        return TensorFlowRuntime(base.with_suffix(".keras"), num_threads=num_threads)
    raise ValueError(f"unknown runtime {kind!r}; choose one of {', '.join(RUNTIMES)}")
