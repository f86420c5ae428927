"""What the model says about drawings in the test's own process, to compare with what the server answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from livedigit.preprocess import DEFAULT_LIMITS, Image, Limits, model_input


def raw_outputs(runtime: Any, images: Sequence[Image], limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """The model's probabilities, before the verdict rule, for drawings that all have a digit: given what
    the server's worker gives it, each drawing's preprocessed image and its pen's path."""
    found = [model_input(image, limits) for image in images]
    pixels = np.stack([inputs[0] for inputs in found])  # type: ignore[index]
    return np.asarray(runtime.predict(pixels, np.stack([inputs[1] for inputs in found])))  # type: ignore[index]
