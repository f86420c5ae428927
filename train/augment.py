"""The on-the-fly augmentation both training scripts apply: one affine warp and thicker or thinner ink.

Written in ``keras.ops`` so that the student (``train/train.py``, TensorFlow, inside ``tf.data``) and the
teacher (``train/teacher.py``, any Keras backend, inside the model) warp images with the same code.
"""

from __future__ import annotations

from typing import Any

from livedigit.preprocess import SIZE

ANGLE = 0.15
"""Largest rotation, radians (about 8.6 degrees) either way."""
SHEAR = 0.15
ZOOM = 0.1
"""Largest zoom, as a log: exp(±0.1), about ±10%."""
SHIFT = 2.0
"""Largest shift, pixels, along each axis."""
THICKNESS = 0.4
"""Largest blend towards a 3x3 dilation (positive) or erosion (negative) of the ink."""


def warp(images: Any, angle: Any, shear: Any, zoom: Any, shift: Any, thickness: Any) -> Any:
    """Rotate, shear, zoom (``exp(zoom)``) and shift each image of ``images`` (N, 28, 28, 1) about its centre
    in one bilinear warp, then blend it towards its dilation or erosion by ``thickness``; ``angle``,
    ``shear``, ``zoom`` and ``thickness`` are (N,), ``shift`` (N, 2)."""
    from keras import ops

    zoom = ops.exp(zoom)
    cos, sin = ops.cos(angle) / zoom, ops.sin(angle) / zoom
    a0, a1 = cos, -sin + shear * cos
    b0, b1 = sin, cos + shear * sin
    centre = SIZE / 2.0
    a2 = centre - a0 * centre - a1 * centre + shift[:, 0]
    b2 = centre - b0 * centre - b1 * centre + shift[:, 1]
    zeros = ops.zeros_like(a0)
    transform = ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    warped = ops.image.affine_transform(
        images, transform, interpolation="bilinear", fill_mode="constant", fill_value=0, data_format="channels_last"
    )
    dilated = ops.max_pool(warped, 3, 1, "same", data_format="channels_last")
    eroded = -ops.max_pool(-warped, 3, 1, "same", data_format="channels_last")
    thickness = ops.reshape(thickness, (-1, 1, 1, 1))
    return warped + ops.maximum(thickness, 0.0) * (dilated - warped) + ops.minimum(thickness, 0.0) * (warped - eroded)


def augment(images: Any, rng_seed: Any) -> Any:
    """:func:`warp` with parameters drawn from TensorFlow's stateless generator: the same batch number and
    seed give the same warp, so a ``tf.data`` pipeline is reproducible whatever its parallelism."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(tf.stack([rng_seed, 0]), 6)
    return warp(
        images,
        angle=tf.random.stateless_uniform([n], seeds[0], -ANGLE, ANGLE),
        shear=tf.random.stateless_uniform([n], seeds[1], -SHEAR, SHEAR),
        zoom=tf.random.stateless_uniform([n], seeds[2], -ZOOM, ZOOM),
        shift=tf.random.stateless_uniform([n, 2], seeds[3], -SHIFT, SHIFT),
        thickness=tf.random.stateless_uniform([n], seeds[4], -THICKNESS, THICKNESS),
    )


def augmentation_layer(seed: int) -> Any:
    """A Keras layer that applies :func:`warp` with fresh random parameters to each training batch and
    passes images through unchanged otherwise; it draws from Keras's own generator, so it runs inside a
    compiled training step on any backend."""
    import keras

    class Augment(keras.layers.Layer):
        def __init__(self) -> None:
            super().__init__(name="augment")
            self.seeds = keras.random.SeedGenerator(seed)

        def call(self, images: Any, training: bool = False) -> Any:
            if not training:
                return images
            n = keras.ops.shape(images)[0]

            def uniform(shape: tuple[Any, ...], limit: float) -> Any:
                return keras.random.uniform(shape, -limit, limit, seed=self.seeds)

            return warp(
                images,
                angle=uniform((n,), ANGLE),
                shear=uniform((n,), SHEAR),
                zoom=uniform((n,), ZOOM),
                shift=uniform((n, 2), SHIFT),
                thickness=uniform((n,), THICKNESS),
            )

    return Augment()
