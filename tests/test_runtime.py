"""The runtimes behind ``predict``: same answers from LiteRT and TensorFlow, at any batch size, from any thread.

The server batches snapshots of many connections and may call the model from several threads, so a
sample's probabilities must not depend on what it was batched with or on which thread ran it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from livedigit.config import DEFAULT_MODEL
from livedigit.preprocess import PATH_FEATURES, PATH_POINTS, SIZE, Pixels, Strokes, preprocess
from livedigit.runtime import (
    BATCH_BUCKETS,
    RUNTIMES,
    LiteRTRuntime,
    ModelLoadError,
    Runtime,
    load_runtime,
)

BATCH_SIZES = (1, 3, 64, 65, 200)

KINDS = [pytest.param(kind, marks=pytest.mark.slow) if kind == "tensorflow" else kind for kind in RUNTIMES]
"""Both runtimes; the cases that run TensorFlow are slow, as importing it alone takes seconds."""


@pytest.fixture(scope="module")
def images(request: pytest.FixtureRequest) -> np.ndarray:
    """200 model inputs: real MNIST test digits through the serving preprocessing, else rendered strokes."""
    try:
        mnist_path = request.getfixturevalue("mnist_path")
    except pytest.skip.Exception:
        rng = np.random.default_rng(7)
        drawings = [[rng.uniform(0, 300, (rng.integers(2, 12), 2)).tolist() for _ in range(2)] for _ in range(200)]
        return np.stack([preprocess(Strokes(drawing)) for drawing in drawings])
    with np.load(mnist_path) as data:
        return np.stack([preprocess(Pixels(image)) for image in data["x_test"][:200]])


@pytest.fixture(scope="module")
def litert() -> Runtime:
    return load_runtime(DEFAULT_MODEL, "litert")


@pytest.fixture(scope="module")
def tensorflow() -> Runtime:
    return load_runtime(DEFAULT_MODEL, "tensorflow")


@pytest.fixture(params=KINDS)
def runtime(request: pytest.FixtureRequest) -> Runtime:
    return request.getfixturevalue("litert" if request.param == "litert" else "tensorflow")


def one_by_one(runtime: Runtime, images: np.ndarray) -> np.ndarray:
    return np.concatenate([runtime.predict(images[index : index + 1]) for index in range(len(images))])


@pytest.mark.slow
def test_litert_and_tensorflow_agree(litert: Runtime, tensorflow: Runtime, images: np.ndarray) -> None:
    """LiteRT serves the 8-bit quantized network (``train/quantize.py``), TensorFlow its float original:
    they name the same digit, with probabilities a few hundredths apart at most."""
    from_litert, from_tensorflow = litert.predict(images), tensorflow.predict(images)
    assert from_litert.shape == from_tensorflow.shape == (len(images), 10)
    agreement = float(np.mean(from_litert.argmax(axis=1) == from_tensorflow.argmax(axis=1)))
    assert agreement >= 0.99, agreement
    assert np.abs(from_litert - from_tensorflow).max() < 0.1


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_batch_size_does_not_change_answers(runtime: Runtime, images: np.ndarray, size: int) -> None:
    expected = one_by_one(runtime, images[:size])
    batched = runtime.predict(images[:size])
    assert batched.shape == (size, 10)
    assert np.abs(batched - expected).max() < 1e-5


def test_probabilities_are_a_distribution(runtime: Runtime, images: np.ndarray) -> None:
    probabilities = runtime.predict(images)
    assert probabilities.dtype == np.float32
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_blank_and_empty_batches(runtime: Runtime) -> None:
    assert runtime.predict(np.zeros((0, SIZE, SIZE), np.float32)).shape == (0, 10)
    blank = runtime.predict(np.zeros((2, SIZE, SIZE), np.float32))
    assert blank.shape == (2, 10)
    np.testing.assert_allclose(blank.sum(axis=1), 1.0, atol=1e-5)


def test_input_dtype_and_layout_do_not_matter(runtime: Runtime, images: np.ndarray) -> None:
    """float64 and non-contiguous batches (a strided view) give the float32 answer."""
    expected = runtime.predict(images[:8])
    as_float64 = runtime.predict(images[:8].astype(np.float64))
    strided = np.zeros((16, SIZE, SIZE), np.float32)
    strided[::2] = images[:8]
    assert np.abs(as_float64 - expected).max() < 1e-6
    assert np.abs(runtime.predict(strided[::2]) - expected).max() < 1e-6


@pytest.mark.parametrize("shape", [(SIZE, SIZE), (2, SIZE, SIZE, 1), (2, 27, 28), (2, 784)])
def test_wrong_batch_shape_is_refused(runtime: Runtime, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"shape \(n, 28, 28\)"):
        runtime.predict(np.zeros(shape, np.float32))


def test_threads_predicting_together_get_their_own_answers(runtime: Runtime, images: np.ndarray) -> None:
    """Eight threads predict different slices at once, repeatedly; each gets what it gets alone."""
    slices = [
        images[start : start + size] for start, size in zip(range(0, 200, 25), (1, 3, 7, 8, 25, 16, 2, 65), strict=True)
    ]
    expected = [runtime.predict(chunk) for chunk in slices]
    results: dict[int, list[np.ndarray]] = {index: [] for index in range(len(slices))}
    errors: list[BaseException] = []
    start = threading.Barrier(len(slices))

    def work(index: int) -> None:
        try:
            start.wait()
            for _ in range(10):
                results[index].append(runtime.predict(slices[index]))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(len(slices))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index, answers in results.items():
        assert len(answers) == 10
        for answer in answers:
            assert np.abs(answer - expected[index]).max() < 1e-5


def test_litert_builds_interpreters_once_per_thread_and_bucket(images: np.ndarray) -> None:
    """Calls never re-allocate: a thread builds at most one interpreter per bucket, whatever it predicts."""
    runtime = LiteRTRuntime(DEFAULT_MODEL.with_suffix(".tflite"))
    built: list[int] = []
    original = runtime._interpreter_class

    def counting(*args: object, **kwargs: object) -> object:
        built.append(threading.get_ident())
        return original(*args, **kwargs)

    runtime._interpreter_class = counting
    for size in (*BATCH_SIZES, *BATCH_SIZES, 127, 5):
        runtime.predict(images[:size])
    assert 0 < len(built) <= len(BATCH_BUCKETS)
    thread = threading.Thread(target=runtime.predict, args=(images[:3],))
    thread.start()
    thread.join()
    assert len([ident for ident in built if ident == thread.ident]) == 2  # buckets 2 and 1


def test_litert_num_threads_is_honoured() -> None:
    """An interpreter with n threads starts n - 1 workers; with 1 thread it starts none (in a clean process)."""
    script = (
        "import json, sys, numpy as np, psutil\n"
        "from livedigit.runtime import LiteRTRuntime\n"
        "process = psutil.Process()\n"
        "counts, kept = {}, []\n"
        "for threads in (1, 4):\n"
        "    before = process.num_threads()\n"
        "    kept.append(LiteRTRuntime(sys.argv[1], num_threads=threads))\n"
        "    kept[-1].predict(np.zeros((1, 28, 28), np.float32))\n"
        "    counts[threads] = process.num_threads() - before\n"
        "print(json.dumps(counts))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(DEFAULT_MODEL.with_suffix(".tflite"))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["1"] == 0
    assert counts["4"] >= 3


def test_num_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_threads"):
        load_runtime(DEFAULT_MODEL, "litert", num_threads=0)


def test_load_runtime_takes_a_base_name_or_either_file() -> None:
    for path in (DEFAULT_MODEL, DEFAULT_MODEL.with_suffix(".keras"), DEFAULT_MODEL.with_suffix(".json")):
        runtime = load_runtime(path, "litert")
        assert isinstance(runtime, LiteRTRuntime)
        assert runtime.path == DEFAULT_MODEL.with_suffix(".tflite")
    with pytest.raises(ValueError, match="unknown runtime 'onnx'; choose one of litert, tensorflow"):
        load_runtime(DEFAULT_MODEL, "onnx")


# --- model files that cannot be loaded -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_missing_model_names_the_file(tmp_path: Path, kind: str) -> None:
    base = tmp_path / "nowhere" / "model"
    with pytest.raises(ModelLoadError) as raised:
        load_runtime(base, kind)
    assert str(base.with_suffix(".tflite" if kind == "litert" else ".keras")) in str(raised.value)


@pytest.mark.parametrize("kind", KINDS)
def test_directory_instead_of_a_model_names_it(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / ("model.tflite" if kind == "litert" else "model.keras")
    folder.mkdir()
    with pytest.raises(ModelLoadError, match=str(folder)):
        load_runtime(tmp_path / "model", kind)


def corruptions(original: bytes) -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    flipped = bytearray(original)
    for index in rng.integers(0, min(len(original), 4096), 64):
        flipped[index] ^= 0xFF
    return {
        "empty": b"",
        "text": b"this is not a model\n" * 20,
        "random": rng.bytes(50_000),
        "truncated": original[: len(original) // 3],
        "header cut": original[:64],
        "bits flipped": bytes(flipped),
    }


@pytest.mark.parametrize("name", list(corruptions(b"x" * 100)))
def test_corrupt_tflite_names_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(corruptions(DEFAULT_MODEL.with_suffix(".tflite").read_bytes())[name])
    with pytest.raises(ModelLoadError) as raised:
        load_runtime(path, "litert")
    assert str(path) in str(raised.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["empty", "text", "random", "truncated"])
def test_corrupt_keras_names_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(corruptions(DEFAULT_MODEL.with_suffix(".keras").read_bytes())[name])
    with pytest.raises(ModelLoadError) as raised:
        load_runtime(path, "tensorflow")
    assert str(path) in str(raised.value)


@pytest.mark.slow
def test_keras_archive_without_weights_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(DEFAULT_MODEL.with_suffix(".keras")) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            if not item.filename.endswith(".h5"):
                target.writestr(item, source.read(item))
    with pytest.raises(ModelLoadError, match=str(path)):
        load_runtime(path, "tensorflow")


@pytest.mark.slow
def test_model_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    """A valid model that is not a 28x28 -> 10 classifier is refused at load, not at the first request."""
    import keras
    import tensorflow as tf

    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(keras.layers.Flatten()(inputs)))
    base = tmp_path / "other"
    model.save(base.with_suffix(".keras"))
    base.with_suffix(".tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    for kind in RUNTIMES:
        with pytest.raises(ModelLoadError, match=r"a digit model maps .*\(n, 28, 28, 1\).*\(n, 32, 4\), to \(n, 10\)"):
            load_runtime(base, kind)


@pytest.fixture(scope="module", params=["image first", "path first"])
def path_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A small model that reads the pen's path beside the image, its inputs in either order, saved as both
    files; and the Keras model itself."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    image = keras.Input((SIZE, SIZE, 1), name="image")
    path = keras.Input((PATH_POINTS, PATH_FEATURES), name="path")
    seen = keras.layers.Dense(10)(keras.layers.Flatten()(image))
    drawn = keras.layers.Dense(10)(keras.layers.Flatten()(path))
    outputs = keras.layers.Softmax()(keras.layers.Add()([seen, drawn]))
    model = keras.Model([image, path] if request.param == "image first" else [path, image], outputs)
    base = tmp_path_factory.mktemp("path-model") / "digits"
    model.save(base.with_suffix(".keras"))
    base.with_suffix(".tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return base, model


@pytest.mark.slow
@pytest.mark.parametrize("kind", RUNTIMES)
def test_a_model_that_reads_the_path_gets_it(path_model: tuple[Path, object], images: np.ndarray, kind: str) -> None:
    base, model = path_model
    runtime = load_runtime(base, kind)
    assert runtime.reads_path
    paths = np.random.default_rng(1).uniform(-0.5, 0.5, (len(images), PATH_POINTS, PATH_FEATURES)).astype(np.float32)
    keras_inputs = [images[..., None], paths] if model.inputs[0].shape[-1] == 1 else [paths, images[..., None]]  # type: ignore[attr-defined]
    expected = np.asarray(model(keras_inputs))  # type: ignore[operator]
    np.testing.assert_allclose(runtime.predict(images, paths), expected, atol=1e-5)
    np.testing.assert_allclose(one_by_one_with_paths(runtime, images, paths), expected, atol=1e-5)
    # Without paths, every drawing is read as having none (zeros), as a raster is.
    np.testing.assert_allclose(runtime.predict(images), runtime.predict(images, np.zeros_like(paths)), atol=1e-6)
    with pytest.raises(ValueError, match="paths of shape"):
        runtime.predict(images, paths[:, :16])


def one_by_one_with_paths(runtime: Runtime, images: np.ndarray, paths: np.ndarray) -> np.ndarray:
    return np.concatenate([runtime.predict(images[i : i + 1], paths[i : i + 1]) for i in range(len(images))])


@pytest.mark.slow
async def test_the_server_gives_a_path_model_each_drawings_path(
    path_model: tuple[Path, object],
    start_server,  # type: ignore[no-untyped-def]
) -> None:
    """Strokes reach such a model with their path and a raster with none, through the worker process."""
    from wsutil import SEVEN, ask, drawing, open_ws, pixels_field

    from livedigit.preprocess import pen_path

    base, _ = path_model
    server = start_server("--model", str(base))
    local = load_runtime(base)
    raster = drawing()
    ws, _ = await open_ws(server.ws_url)
    async with ws:
        drawn = await ask(ws, {"type": "submit", "id": 1, "strokes": SEVEN})
        sent = await ask(ws, {"type": "submit", "id": 2, "pixels": pixels_field(raster)})
    seven = Strokes(SEVEN)
    with_path = local.predict(preprocess(seven)[None], pen_path(seven)[None])[0]
    np.testing.assert_allclose(drawn["probabilities"], with_path, atol=1e-5)
    assert not np.allclose(with_path, local.predict(preprocess(seven)[None])[0], atol=1e-3)
    np.testing.assert_allclose(sent["probabilities"], local.predict(preprocess(Pixels(raster))[None])[0], atol=1e-5)
