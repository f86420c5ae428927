"""The training script end to end, on a tiny subset: it must export exactly what the server loads.

``python -m train --quick`` trains one epoch on 2,000 MNIST digits and 300 pen-digits drawings, plus a
small export of labels made by the real label store and ``livedigit labels export``; the point is not
accuracy but that the exported ``.tflite``, ``.keras`` and model card are consistent with each other and
with the serving code (the card's accuracies are re-measured here through the serving path).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from livedigit import pendigits
from livedigit.labels import database
from livedigit.labels.store import Label, LabelStore
from livedigit.preprocess import SIZE, Image, Pixels, Strokes, preprocess
from livedigit.runtime import Runtime, load_runtime
from livedigit.verdict import VerdictRule
from train.data import as_served, model_inputs, subset
from train.train import QUICK_LIMIT as QUICK
from train.train import teacher_beliefs

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def labels_export(mnist_path: Path, pen_digits_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of 120 labels from 30 browsers: pen-digits test drawings as if drawn on the page, and
    MNIST test digits sent as pixels, stored by the label store and written by ``livedigit labels export``."""
    folder = tmp_path_factory.mktemp("labels")
    drawings: list[tuple[Strokes | Pixels, int]] = [
        (Strokes(digit.strokes), digit.label) for digit in pendigits.load(pen_digits_file, "test")[1000:1090]
    ]
    with np.load(mnist_path) as data:
        drawings += [
            (Pixels(image), int(label))
            for image, label in zip(data["x_test"][600:630], data["y_test"][600:630], strict=True)
        ]

    async def store_all() -> None:
        store = LabelStore.open(folder / database.SQLITE_FILE)
        await store.start()
        for index, (drawing, digit) in enumerate(drawings):
            writer = f"browser-{index % 30:04d}"
            await store.add(Label(drawing, digit, writer, "livedigit-cnn", "test", predicted=None, probabilities=None))
        await store.close()

    asyncio.run(store_all())
    out = folder / "labels.jsonl"
    command = [sys.executable, "-m", "livedigit", "labels", "export", "--data-dir", str(folder), "--out", str(out)]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def teacher(mnist_path: Path, pen_digits_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Base path of a teacher made by ``python -m train.teacher --quick`` (two narrow members) on the
    Keras backend the tests run, TensorFlow."""
    out = tmp_path_factory.mktemp("teacher")
    command = [sys.executable, "-m", "train.teacher", "--quick", "--channels", "8,16,24", "--seed", "5"]
    command += ["--data", str(mnist_path), "--pen-digits", str(pen_digits_file), "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "livedigit-teacher"


def test_teacher_is_the_average_of_its_members(teacher: Path, mnist_path: Path) -> None:
    """The ``.keras`` a student distils holds every member and answers their mean; its card says how each
    member and the average did on the validation and test sets, measured through the serving path."""
    import keras

    model = keras.models.load_model(teacher.with_suffix(".keras"), compile=False)
    with np.load(mnist_path) as data:
        images = as_inputs([preprocess(Pixels(image)) for image in data["x_test"][:32]])[..., None]
    members = [model.get_layer(f"member_{index}") for index in range(2)]
    expected = np.mean([member.predict(images, verbose=0) for member in members], axis=0)
    answered = model.predict(images, verbose=0)
    np.testing.assert_allclose(answered, expected, atol=1e-6)
    np.testing.assert_allclose(answered.sum(axis=1), 1.0, atol=1e-5)
    card = json.loads(teacher.with_suffix(".json").read_text())
    assert card["members"] == 2 and card["training"]["seeds"] == [5, 6]
    assert card["training"]["backend"] == "tensorflow" and card["training"]["quick"] is True
    assert card["parameters"] == model.count_params()
    sets = {"mnist_validation", "pen_validation", "mnist_test", "pen_test"}
    assert set(card["accuracy"]) == sets
    assert all(set(member) == sets | {"seconds"} for member in card["member_accuracy"])
    assert len(card["member_accuracy"]) == 2
    assert all(0 <= value <= 100 for value in card["accuracy"].values())
    assert not list(teacher.parent.glob("*.partial*"))


def test_student_reads_a_teacher_from_its_tflite_or_else_its_keras(
    teacher: Path, exported: Path, mnist_path: Path
) -> None:
    """``--teacher`` runs a model's ``.tflite`` with LiteRT where there is one (the quick student has
    both files), and otherwise its ``.keras``, as ``python -m train.teacher`` writes it."""
    import keras

    with np.load(mnist_path) as data:
        images = as_inputs([preprocess(Pixels(image)) for image in data["x_test"][:40]])
    from_tflite = teacher_beliefs(exported, images)
    np.testing.assert_allclose(from_tflite, load_runtime(exported, "litert").predict(images), atol=1e-6)
    from_keras = teacher_beliefs(teacher, images)
    model = keras.models.load_model(teacher.with_suffix(".keras"), compile=False)
    np.testing.assert_allclose(from_keras, model.predict(images[..., None], verbose=0), atol=1e-6)
    assert from_tflite.shape == from_keras.shape == (40, 10)


def test_a_teacher_that_reads_the_path_is_asked_with_it(exported: Path, pen_digits_file: Path) -> None:
    """A teacher that reads the pen's path (the quick student) answers for each drawing's image and path
    together, as the server would: a path left out would make it answer for the image alone."""
    drawings = [as_served(digit) for digit in pendigits.load(pen_digits_file, "test")[:40]]
    images, paths, _ = model_inputs(drawings)
    runtime = load_runtime(exported, "litert")
    with_paths = teacher_beliefs(exported, images, paths)
    np.testing.assert_allclose(with_paths, runtime.predict(images, paths), atol=1e-6)
    assert not np.allclose(with_paths, runtime.predict(images), atol=1e-3)


@pytest.fixture(scope="module")
def exported(
    mnist_path: Path,
    pen_digits_file: Path,
    labels_export: Path,
    teacher: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """Base path of a model trained by ``python -m train --quick`` with seed 3 and narrow layers (one
    block at 14x14), with ``labels_export``, distilled from ``teacher``'s ``.keras``."""
    out = tmp_path_factory.mktemp("trained")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "--quick",
            "--seed",
            "3",
            "--channels",
            "16,24,40",
            "--blocks",
            "1,2",
            "--data",
            str(mnist_path),
            "--pen-digits",
            str(pen_digits_file),
            "--extra-pen",
            str(labels_export),
            "--teacher",
            str(teacher),
            "--out",
            str(out),
            "--name",
            "quick",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "quick"


@pytest.fixture(scope="module")
def card(exported: Path) -> dict:
    return json.loads(exported.with_suffix(".json").read_text())


def as_inputs(images: list[np.ndarray | None]) -> np.ndarray:
    return np.stack([np.zeros((SIZE, SIZE), np.float32) if image is None else image for image in images])


def named(runtime: Runtime, drawings: list[Image]) -> np.ndarray:
    """The digit the model names for each drawing, given what the server's worker gives it: the
    preprocessed image and the pen's path."""
    images, paths, _ = model_inputs(drawings)
    return runtime.predict(images, paths).argmax(axis=1)


def test_exports_the_three_files(exported: Path) -> None:
    for suffix in (".keras", ".tflite", ".json"):
        path = exported.with_suffix(suffix)
        assert path.is_file() and path.stat().st_size > 0, path


def test_card_describes_the_model(exported: Path, card: dict) -> None:
    import keras

    model = keras.models.load_model(exported.with_suffix(".keras"), compile=False)
    assert card["name"] == "quick"
    assert card["architecture"] and all(isinstance(layer, str) for layer in card["architecture"])
    assert card["architecture"][-1] == "Softmax(10,)" and card["training"]["blend"] is True
    assert card["parameters"] == model.count_params()
    assert isinstance(card["flops_per_sample"], int) and card["flops_per_sample"] > 2 * card["parameters"]
    assert card["training"]["seed"] == 3
    assert card["training"]["channels"] == [16, 24, 40] and card["training"]["blocks"] == [1, 2]
    widths = [layer.output.shape[-1] for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert widths == [16, 24, 40, 40], widths
    assert card["training"]["quick"] is True
    assert any("MNIST" in item for item in card["training"]["data"])
    assert any("pen_digits" in item for item in card["training"]["data"])
    assert card["training"]["samples"] > 2000
    assert card["training"]["teacher"]["model"] == "livedigit-teacher"


def test_card_records_the_commit(card: dict) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        assert card["git_commit"] == "unknown"
    else:
        assert re.fullmatch(r"[0-9a-f]{40}", card["git_commit"])
        assert card["git_commit"] == head.stdout.strip()


def test_card_accuracies_are_what_the_serving_path_measures(
    exported: Path, card: dict, mnist_path: Path, pen_digits_file: Path
) -> None:
    """The quick run measures 300 MNIST and 300 pen-digits test digits spread over each set; so do we, as served."""
    runtime = load_runtime(exported, "litert")
    with np.load(mnist_path) as data:
        keep = subset(data["x_test"], QUICK)
        images, labels = data["x_test"][keep], data["y_test"][keep]
    mnist = named(runtime, [Pixels(image) for image in images])
    assert card["accuracy"]["mnist_test"] == pytest.approx(float((mnist == labels).mean()), abs=1e-4)
    test = pendigits.load(pen_digits_file, "test")
    pen = [test[index] for index in subset(test, QUICK)]
    guesses = named(runtime, [as_served(digit) for digit in pen])
    measured = float(np.mean(guesses == [digit.label for digit in pen]))
    assert card["accuracy"]["pen_digits_test"] == pytest.approx(measured, abs=1e-4)
    confusion = np.array(card["accuracy"]["pen_digits_test_confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == QUICK


def test_card_holds_a_verdict_rule_fitted_without_test_data(card: dict) -> None:
    rule = VerdictRule.from_card(card)
    assert rule.temperature > 0 and 0 < rule.reject_below <= 1 and rule.unsure_margin > 0
    fitted = card["verdict"]["fitted"]
    assert set(fitted["validation_digits"]) == {"mnist_validation", "pen_digits_validation"}
    assert fitted["fitting_negatives"] > 0


def test_card_records_every_evaluation_figure(card: dict) -> None:
    evaluation = card["evaluation"]
    assert set(evaluation["early"]["pen_digits_test_top1"]) == {"0.5", "0.75", "0.9", "1"}
    assert 0 <= evaluation["early"]["pen_digits_test_settled_early"] <= 1
    assert 0 <= evaluation["calibration"]["pen_digits_test_ece"] <= 1
    for shares in (evaluation["verdict"]["held_out_negatives"], evaluation["verdict"]["pen_digits_test"]):
        assert set(shares) == {"digit", "unsure", "not_a_digit", "empty"}
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert set(card["training"]["step_seconds"]) == {"data", "training", "verdict_rule", "evaluation"}


def test_training_never_reads_the_validation_writers(card: dict) -> None:
    """Six pen-digits train writers and the last MNIST training digits are held out for validation."""
    assert any("validation" in item for item in card["training"]["data"])
    assert len(card["evaluation"]["data"]["pen_digits_validation_writers"]) == pendigits.VALIDATION_WRITERS


def test_exported_tflite_agrees_with_the_keras_model(exported: Path, card: dict, mnist_path: Path) -> None:
    with np.load(mnist_path) as data:
        images = as_inputs([preprocess(Pixels(image)) for image in data["x_test"][:64]])
    from_litert = load_runtime(exported, "litert").predict(images)
    from_keras = load_runtime(exported, "tensorflow").predict(images)
    assert np.abs(from_litert - from_keras).max() < 1e-4
    assert card["tflite_vs_keras_max_abs_difference"] < 1e-4


def test_exported_labels_join_training_and_testing_by_writer(exported: Path, card: dict, labels_export: Path) -> None:
    """Train rows are rendered like pen digits (two renderings each in a quick run, pixel rows too, and the
    stroke rows cut short as live snapshots); test rows are measured through the serving path, and no
    writer is on both sides."""
    extra_train, extra_test = pendigits.load(labels_export, "train"), pendigits.load(labels_export, "test")
    assert extra_train and extra_test and len(extra_train) + len(extra_test) == 120
    assert not {digit.writer for digit in extra_train} & {digit.writer for digit in extra_test}
    assert any(digit.pixels is not None for digit in extra_train)
    training = card["training"]
    assert training["cut_digits"] > 0 and training["negatives"] == 0  # a quick run makes no negatives
    assert training["samples"] == 2000 + 2 * (300 + len(extra_train)) + training["cut_digits"]
    assert any(item.startswith(f"extra pen digits ({len(extra_train)} digits") for item in card["training"]["data"])
    runtime = load_runtime(exported, "litert")
    guesses = named(runtime, [digit.image() for digit in extra_test])
    measured = float(np.mean(guesses == [digit.label for digit in extra_test]))
    assert card["accuracy"]["extra_pen_test"] == pytest.approx(measured, abs=1e-4)


@pytest.fixture(scope="module")
def quantized(
    exported: Path, mnist_path: Path, pen_digits_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Base path of the quick model quantized by ``python -m train.quantize``, with a fixed temperature."""
    out = tmp_path_factory.mktemp("quantized") / "quick-int8"
    command = [sys.executable, "-m", "train.quantize", "--model", str(exported), "--out", str(out)]
    command += ["--data", str(mnist_path), "--pen-digits", str(pen_digits_file), "--samples", "100", "--limit", "300"]
    done = subprocess.run([*command, "--temperature", "1.0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_quantize_writes_an_8_bit_network_that_names_the_float_models_digits(
    quantized: Path, exported: Path, mnist_path: Path
) -> None:
    """The served ``.tflite`` holds 8-bit weights, a quarter of the float file, and names the same digit as
    the float ``.keras`` beside it on nearly every MNIST test digit, as its card says; the softmax stays
    float, so the probabilities are not rounded to multiples of 1/256, and so does the convolution that
    reads the image, whose 8-bit kernel is slow on CPUs without AVX-512."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(quantized.with_suffix(".tflite")))
    tensors = interpreter.get_tensor_details()
    assert any(tensor["dtype"] == np.int8 for tensor in tensors)
    dtypes = {tensor["index"]: tensor["dtype"] for tensor in tensors}
    image = next(d["index"] for d in interpreter.get_input_details() if len(d["shape"]) == 4)
    first = [op for op in interpreter._get_ops_details() if image in op["inputs"]]
    assert [op["op_name"] for op in first] == ["CONV_2D"]
    assert all(dtypes[index] == np.float32 for index in [*first[0]["inputs"], *first[0]["outputs"]] if index >= 0)
    assert quantized.with_suffix(".tflite").stat().st_size < exported.with_suffix(".tflite").stat().st_size / 2
    with np.load(mnist_path) as data:
        images = as_inputs([preprocess(Pixels(image)) for image in data["x_test"]])
    integer = load_runtime(quantized, "litert").predict(images)
    floating = load_runtime(quantized, "tensorflow").predict(images)
    agreement = float(np.mean(integer.argmax(axis=1) == floating.argmax(axis=1)))
    card = json.loads(quantized.with_suffix(".json").read_text())
    assert agreement >= 0.98
    assert card["quantization"]["float_agreement_mnist_test"] == pytest.approx(agreement, abs=1e-4)
    assert card["tflite_vs_keras_max_abs_difference"] == pytest.approx(np.abs(integer - floating).max(), abs=1e-4)
    np.testing.assert_allclose(integer.sum(axis=1), 1.0, atol=1e-5)
    assert np.any(np.abs(integer * 256 - np.rint(integer * 256)) > 1e-3)


def test_quantize_fits_the_verdict_rule_again_and_measures_the_quantized_model(quantized: Path) -> None:
    """The card keeps the source's training record, with the verdict rule and every figure made again on
    the 8-bit network (the temperature kept as given)."""
    card = json.loads(quantized.with_suffix(".json").read_text())
    assert card["training"]["quick"] is True and card["parameters"] > 0
    assert card["verdict"]["temperature"] == 1.0
    assert card["verdict"]["fitted"]["temperature"]["by"] == "fixed (--temperature)"
    assert "--temperature=1.0" in card["verdict"]["fitted"]["command"]
    measured = card["evaluation"]["measured"]
    assert measured["command"].startswith("python -m train.evaluate") and str(quantized) in measured["command"]
    assert measured["rule"] == VerdictRule.from_card(card).to_card() and measured["limit"] == 300
