"""The generated non-digits: reproducible, two disjoint halves, and every one a drawing the server takes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from livedigit.preprocess import Pixels, Strokes, preprocess
from train import negatives

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def halves() -> dict[str, list[negatives.Negative]]:
    missing = negatives.missing_fonts()
    if missing:
        pytest.skip(f"fonts not installed: {', '.join(missing)} (apt-get install {negatives.PACKAGES})")
    return {split: negatives.negatives(split) for split in negatives.SPLITS}


def drawn(negative: negatives.Negative) -> list[np.ndarray]:
    image = negative.image
    if isinstance(image, Strokes):
        return [np.asarray(stroke) for stroke in image.strokes]
    assert isinstance(image, Pixels)
    return [image.array]


def test_the_same_seed_makes_the_same_drawings_and_another_seed_others(halves) -> None:  # type: ignore[no-untyped-def]
    again = negatives.negatives("fit")
    assert len(again) == len(halves["fit"])
    for first, second in zip(halves["fit"], again, strict=True):
        assert (first.kind, first.source, first.name) == (second.kind, second.source, second.name)
        assert all(np.array_equal(a, b) for a, b in zip(drawn(first), drawn(second), strict=True))
    other = negatives.negatives("fit", seed=1)
    assert not np.array_equal(drawn(other[0])[0], drawn(halves["fit"][0])[0])


def test_the_halves_share_no_font(halves) -> None:  # type: ignore[no-untyped-def]
    sources = {split: {n.source for n in made if n.kind != "shape"} for split, made in halves.items()}
    assert sources["fit"] and sources["held_out"] and not sources["fit"] & sources["held_out"]
    kinds = {split: Counter(n.kind for n in made) for split, made in halves.items()}
    assert all(set(counts) == {"letter-strokes", "letter-raster", "shape"} for counts in kinds.values())


def test_only_letters_unlike_digits_are_drawn(halves) -> None:  # type: ignore[no-untyped-def]
    letters = {n.name for made in halves.values() for n in made if n.kind != "shape"}
    assert letters == set(negatives.LETTERS)
    assert not letters & set("oOlIisSzZgqbBdDGtTyY")


def test_every_negative_is_a_drawing_the_server_recognises_something_in(halves) -> None:  # type: ignore[no-untyped-def]
    for made in halves.values():
        for negative in made[::7]:
            image = preprocess(negative.image)
            assert image is not None and image.shape == (28, 28) and image.max() > 0.5, negative
            if isinstance(negative.image, Strokes):
                assert negative.image.surface == negatives.SURFACE


def test_the_test_script_installs_every_font() -> None:
    script = (Path(__file__).resolve().parent.parent / "scripts" / "test.sh").read_text()
    assert f'FONTS="{negatives.PACKAGES}"' in script
