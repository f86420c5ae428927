"""The served form of a network that reads the pen's path: its logits with the path and without, averaged.

    python -m train.blend --model /tmp/candidate/livedigit-cnn --out /tmp/blended/livedigit-cnn \
        --data ../shared/data/mnist.npz --pen-digits ../shared/data/pen_digits.jsonl

A network that reads the pen's path learns its training writers' ways of drawing, and 24 writers mostly
share one: the shipped network read the pen-digits validation writers' digits at 99.73% as drawn but
at 91.3% with their strokes in reverse order, 93.1% with each stroke drawn from its other end and 93.5%
with both, where the image alone (the path zeroed) read 98.8% of them in every order. A stranger who
draws a 4's two strokes the other way round, or a 0 clockwise, gets the path's wrong belief at full
strength. Averaged with the same network's answer from the image alone, a path that agrees with the image
sharpens the answer and one that disagrees is outvoted unless it is sure: with the shipped network's
weights unchanged (8-bit), 6 validation errors as drawn (4 before) and 7, 13 and 11 in the three other
orders (130, 103 and 98 before); on the test writers 33 as drawn (36) and 34, 43 and 42 redrawn (343,
233 and 248). A raster has no path, so both halves give the same answer and nothing changes for it.

The image's features are computed once; only the path's two small dense layers, the image's share of
the next layer (a sum, not a second multiplication) and the last two layers run twice: 0.04 MFLOPs
more per digit (7.41 instead of 7.37). The weights are the trained network's, unchanged: ``python -m train`` writes
this form, and this script makes it from a network trained without it. The float ``.tflite`` is written
beside the ``.keras``, the verdict rule is fitted again and every figure of the card measured again on
it, as ``python -m train`` does; ``python -m train.quantize`` then makes the 8-bit network that is served.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from livedigit import pendigits
from train.quantize import measure_again

BLEND_LAYER = "image_alone"
"""Name of the layer that zeroes the path for the image's own answer: a blended network has one."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.blend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="base path of the trained network (.keras and .json)")
    parser.add_argument("--out", required=True, help="base path of the blended network")
    parser.add_argument("--data", default=None, help="MNIST .npz in Keras layout (default: Keras's download)")
    parser.add_argument("--pen-digits", default=str(pendigits.DEFAULT_PATH), help="pen_digits.jsonl")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per measured set")
    return parser.parse_args(argv)


def is_blended(model: Any) -> bool:
    return any(layer.name == BLEND_LAYER for layer in model.layers)


def blended(model: Any) -> Any:
    """``model`` (``train.train.build_model(path=True)``, trained) as served: one pass of the image's layers,
    the path's layers and the last two layers run on the path and on a zeroed path, their logits averaged,
    then the softmax. Every layer is a copy with the trained weights, so ``model`` is left as it was."""
    import keras
    from keras import layers

    if is_blended(model):
        raise ValueError(f"{model.name} is already blended")
    joins = [layer for layer in model.layers if isinstance(layer, layers.Concatenate)]
    if len(model.inputs) != 2 or len(joins) != 1:
        raise ValueError(f"{model.name} does not read the pen's path (build_model(path=True) makes one that does)")
    features, way = joins[0].input
    hidden, norm, relu, _dropout, last = _chain(model.output, joins[0])
    if not isinstance(hidden, layers.Dense) or not isinstance(last, layers.Dense) or hidden.use_bias:
        raise ValueError(f"{model.name}'s layers after the join are not build_model's")

    image = keras.Input(model.inputs[0].shape[1:], name="image")
    path = keras.Input(model.inputs[1].shape[1:], name="path")
    _, seen = _copied(_chain(features), image)
    reading, read = _copied(_chain(way), path)
    unread = _through(reading, layers.Rescaling(0.0, name=BLEND_LAYER)(path))
    kernel = hidden.get_weights()[0]
    from_image = layers.Dense(hidden.units, use_bias=False, name="hidden_from_image")
    from_path = layers.Dense(hidden.units, use_bias=False, name="hidden_from_path")
    shared = from_image(seen)
    from_image.set_weights([kernel[: seen.shape[-1]]])
    rest, first = _copied([norm, relu, last], layers.Add()([shared, from_path(read)]), softmax=False)
    from_path.set_weights([kernel[seen.shape[-1] :]])
    second = _through(rest, layers.Add()([shared, from_path(unread)]))
    outputs = layers.Softmax(name="probabilities")(layers.Average()([first, second]))
    return keras.Model([image, path], outputs, name=model.name)


def _chain(tensor: Any, start: Any = None) -> list[Any]:
    """The layers from ``start`` (the model's input when ``None``) to the one that made ``tensor``, in
    order: the network's parts are chains without branches."""
    import keras

    chain: list[Any] = []
    while True:
        layer = tensor._keras_history.operation
        if layer is start or isinstance(layer, keras.layers.InputLayer):
            return chain[::-1]
        chain.append(layer)
        tensor = layer.input


def _copied(chain: list[Any], tensor: Any, softmax: bool = True) -> tuple[list[Any], Any]:
    """Copies of ``chain``'s layers with their trained weights, dropout left out (it only trains), and
    ``tensor`` through them; with ``softmax`` false, a last layer's softmax is left out too (logits)."""
    import keras

    copies = []
    for layer in chain:
        if isinstance(layer, keras.layers.Dropout):
            continue
        config = layer.get_config()
        if not softmax and layer is chain[-1] and config.get("activation") == "softmax":
            config |= {"activation": "linear", "name": "logits"}
        copy = type(layer).from_config(config)
        tensor = copy(tensor)
        copy.set_weights(layer.get_weights())
        copies.append(copy)
    return copies, tensor


def _through(chain: list[Any], tensor: Any) -> Any:
    for layer in chain:
        tensor = layer(tensor)
    return tensor


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from train.train import describe, export_tflite, git_commit

    source, out = Path(args.model).with_suffix(""), Path(args.out).with_suffix("")
    model = blended(keras.models.load_model(source.with_suffix(".keras"), compile=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out.with_suffix(".keras"))
    export_tflite(model, out.with_suffix(".tflite"))
    card: dict[str, Any] = json.loads(source.with_suffix(".json").read_text())
    for measured in ("verdict", "evaluation", "quantization", "tflite_vs_keras_max_abs_difference"):
        card.pop(measured, None)
    card.update(describe(model))
    card["training"]["blend"] = True
    card["blended_by"] = {"command": "python -m train.blend", "git_commit": git_commit()}
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {out}.keras and {out}.tflite (float32)", flush=True)

    measure_again(out, args.data, args.pen_digits, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
