"""Quantize a trained model to 8-bit integers for serving: the same network at about a quarter of the CPU.

    python -m train.quantize --model models/livedigit-cnn --data ../shared/data/mnist.npz \
        --pen-digits ../shared/data/pen_digits.jsonl [--temperature 1.0] [--out BASE]

On an Intel CPU with AVX-512 and VNNI, LiteRT ran an 8-bit network through XNNPACK at 1.6-1.7 times
its float32 form's digits/s on one core; on an AMD EPYC with AVX2 alone, at 0.63 times with every layer
in 8 bits and 0.92 times with the first convolution in float32, as this script leaves it (see below).
The model is a large share of the server's CPU per prediction. Weights are quantized per channel
and activations per tensor, with ranges taken from a representative set of what the server feeds the
model: MNIST training digits and pen-digits training drawings, whole and cut after 75% of their points
as a live snapshot is, all through ``livedigit.preprocess``. The input stays float32 (the server's
preprocessing output, unchanged) and the final softmax stays float32, so the ten probabilities keep
their full resolution: an int8 softmax would round every probability to a multiple of 1/256, which the
verdict rule's thresholds and the calibration would see. So does the first convolution, the image's
one channel to 32 at full resolution (:func:`float_layers`): on a CPU without AVX-512 XNNPACK's 8-bit
kernel for it ran at a seventh of the float one's speed, and the rest of the network waited on it.

The ``.keras`` model is the float original; the ``.tflite`` written is the quantized one. The card is
the source model's, with a ``quantization`` object (method, representative data, agreement with the
float model on the MNIST test digits), then the verdict rule fitted again (``train/calibrate.py``) and
every figure measured again on the quantized model (``train/evaluate.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from livedigit import pendigits
from livedigit.config import DEFAULT_MODEL
from livedigit.preprocess import SIZE
from livedigit.runtime import IMAGE_SHAPE, load_runtime
from train import calibrate, evaluate
from train.data import MNIST_VALIDATION, as_served, load_mnist, model_inputs, rasters, run

REPRESENTATIVE_CUT = 0.75
"""Pen digits join the representative set whole and cut after this share of their points."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model base path (.keras and .json)")
    parser.add_argument("--out", default=None, help="base path of the quantized model (default: --model)")
    parser.add_argument("--data", default=None, help="MNIST .npz in Keras layout (default: Keras's download)")
    parser.add_argument("--pen-digits", default=str(pendigits.DEFAULT_PATH), help="pen_digits.jsonl")
    parser.add_argument("--samples", type=int, default=1000, help="representative images of each kind")
    parser.add_argument("--seed", type=int, default=1, help="which representative images are drawn")
    parser.add_argument(
        "--temperature",
        type=calibrate.temperature,
        default=None,
        help="calibration temperature to keep instead of fitting one (train.calibrate --temperature)",
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per measured set")
    return parser.parse_args(argv)


def representative(
    mnist_train: np.ndarray, pen_train: list[pendigits.PenDigit], samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs as the server makes them, the images (n, 28, 28, 1) and the pen's paths: ``samples``
    MNIST training digits (not the validation ones), and ``samples`` pen-digits training drawings whole
    and as many cut after 75% of their points."""
    digits = mnist_train[:-MNIST_VALIDATION]
    chosen = rng.choice(len(digits), size=min(samples, len(digits)), replace=False)
    drawings = rasters(digits[chosen])
    pen = [pen_train[i] for i in rng.choice(len(pen_train), size=min(samples, len(pen_train)), replace=False)]
    drawings += [as_served(digit) for digit in pen]
    drawings += [as_served(digit, REPRESENTATIVE_CUT) for digit in pen]
    images, paths, empty = model_inputs(drawings)
    return images[~empty].reshape(-1, SIZE, SIZE, 1), paths[~empty]


def int8_tflite(saved_model: str, samples: tuple[np.ndarray, np.ndarray], reads_path: bool) -> bytes:
    """A SavedModel converted to LiteRT with int8 weights and activations, float32 input, first convolution
    (:func:`float_layers`) and softmax; ``reads_path``: the model's second input is the pen's path."""
    import tensorflow as tf

    images, paths = samples

    def feed() -> Iterator[dict[str, np.ndarray]]:
        for index in range(len(images)):
            one = {"image": images[index : index + 1]}
            if reads_path:
                one["path"] = paths[index : index + 1]
            yield one

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    kept_float = float_layers(converter.convert())
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = feed
    # The debugger is TensorFlow's documented way to leave chosen ops in float (selective quantization).
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=feed,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=["SOFTMAX"], denylisted_nodes=kept_float
        ),
    )
    model: bytes = debugger.get_nondebug_quantized_model()
    return model


def float_layers(float_model: bytes) -> list[str]:
    """The nodes of a float LiteRT model that stay float32 in the 8-bit one: the convolution that reads
    the image (named by its output tensor, as the converter's debugger takes them).

    On one channel at 28x28 it is a small share of the network's FLOPs (0.45 of 7.4 M), but XNNPACK's
    8-bit kernel for a one-channel convolution is slow on a CPU without AVX-512: 69 µs a digit against
    10 µs in float32 on an AMD EPYC with AVX2, 40% of the whole 8-bit network's time (2026-12-05).
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=float_model)
    image = next(d["index"] for d in interpreter.get_input_details() if tuple(d["shape"][1:]) == IMAGE_SHAPE)
    names = {tensor["index"]: tensor["name"] for tensor in interpreter.get_tensor_details()}
    return [
        names[op["outputs"][0]]
        for op in interpreter._get_ops_details()
        if op["op_name"] == "CONV_2D" and image in op["inputs"]
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    started = time.time()
    source = Path(args.model).with_suffix("") if Path(args.model).suffix else Path(args.model)
    out = Path(args.out).with_suffix("") if args.out else source
    print("loading MNIST and the pen digits ...", flush=True)
    x_train, _, x_test, y_test = load_mnist(args.data)
    pen_train, _ = pendigits.split_writers(pendigits.load(args.pen_digits, "train"))
    samples = representative(x_train, pen_train, args.samples, np.random.default_rng(args.seed))
    print(f"quantizing {source}.keras with {len(samples[0])} representative images ...", flush=True)
    model = keras.models.load_model(source.with_suffix(".keras"), compile=False)
    with tempfile.TemporaryDirectory() as saved_model:
        model.export(saved_model, format="tf_saved_model", verbose=False)
        quantized = int8_tflite(saved_model, samples, len(model.inputs) > 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out != source:
        shutil.copyfile(source.with_suffix(".keras"), out.with_suffix(".keras"))
    out.with_suffix(".tflite").write_bytes(quantized)

    test = rasters(x_test)
    floating = run(load_runtime(source, "tensorflow"), test, "MNIST test, float model")
    integer = run(load_runtime(out, "litert"), test, "MNIST test, quantized model")
    card: dict[str, Any] = json.loads(source.with_suffix(".json").read_text())
    for measured in ("verdict", "evaluation"):  # fitted and measured again below, on the quantized model
        card.pop(measured, None)
    card["quantization"] = {
        "method": (
            "int8 weights (per channel) and activations, float32 input, first convolution and softmax "
            "(LiteRT converter)"
        ),
        "representative": (
            f"{args.samples} MNIST training digits and {args.samples} pen-digits training drawings, whole and cut "
            f"after {REPRESENTATIVE_CUT:.0%} of their points ({len(samples[0])} model inputs, seed {args.seed})"
        ),
        "float_agreement_mnist_test": round(float((floating.predicted() == integer.predicted()).mean()), 5),
        "float_accuracy_mnist_test": round(float((floating.predicted() == y_test).mean()), 5),
        "seconds": round(time.time() - started, 1),
    }
    card["tflite_vs_keras_max_abs_difference"] = float(np.abs(floating.probabilities - integer.probabilities).max())
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card["quantization"], indent=2), flush=True)

    measure_again(out, args.data, args.pen_digits, args.limit, args.temperature)
    return 0


def measure_again(
    model: Path, data: str | None, pen_digits: str, limit: int | None = None, temperature: float | None = None
) -> None:
    """Fit ``model``'s verdict rule again (``train/calibrate.py``; ``temperature`` kept if given) and measure
    every figure of its card again (``train/evaluate.py --card``): what a changed network needs."""
    shared = [f"--model={model}", f"--pen-digits={pen_digits}"] + ([f"--data={data}"] if data else [])
    limited = [f"--limit={limit}"] if limit else []
    calibrate.main([*shared, *limited, *([f"--temperature={temperature}"] if temperature is not None else [])])
    evaluate.main([*shared, *limited, "--card"])


if __name__ == "__main__":
    sys.exit(main())
