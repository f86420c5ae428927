"""The on-the-fly augmentation both training scripts apply: one affine warp and thicker or thinner ink,
and for the student, optionally, an elastic distortion.

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
ELASTIC_GRID = 6
"""Control points of the elastic distortion along each side: one every 5.4 px, so the field bends a
stroke over a few pixels without breaking it."""


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


def bend(images: Any, displacement: Any) -> Any:
    """Move each pixel of ``images`` (N, 28, 28, 1) by ``displacement`` (N, 28, 28, 2: rows, columns, in
    pixels): each output pixel takes the bilinear ink found that far from it, and no ink from beyond the
    edge."""
    from keras import ops

    n = ops.shape(images)[0]
    pad = 2  # sources are clipped to within a pixel of the field, so two of zeros cover every corner
    side = SIZE + 2 * pad
    padded = ops.reshape(ops.pad(images[..., 0], [[0, 0], [pad, pad], [pad, pad]]), (-1,))
    grid = ops.arange(SIZE, dtype="float32")
    y = ops.clip(grid[None, :, None] + displacement[..., 0], -1.0, float(SIZE))
    x = ops.clip(grid[None, None, :] + displacement[..., 1], -1.0, float(SIZE))
    y0, x0 = ops.floor(y), ops.floor(x)
    wy, wx = y - y0, x - x0
    base = ops.reshape(ops.arange(n, dtype="int32") * side * side, (-1, 1, 1))
    top = base + (ops.cast(y0, "int32") + pad) * side + ops.cast(x0, "int32") + pad

    def ink(index: Any) -> Any:
        return ops.take(padded, index)

    upper = ink(top) * (1.0 - wx) + ink(top + 1) * wx
    lower = ink(top + side) * (1.0 - wx) + ink(top + side + 1) * wx
    return (upper * (1.0 - wy) + lower * wy)[..., None]


def augment(images: Any, rng_seed: Any, elastic: float = 0.0) -> Any:
    """:func:`warp` with parameters drawn from TensorFlow's stateless generator: the same batch number and
    seed give the same warp, so a ``tf.data`` pipeline is reproducible whatever its parallelism.

    With ``elastic`` above 0, each image is then :func:`bend`-ed by a smooth random field: a displacement
    drawn at :data:`ELASTIC_GRID` x :data:`ELASTIC_GRID` control points (normal, ``elastic`` pixels
    standard deviation) and interpolated bicubically between them. An affine warp moves a whole digit
    alike; handwriting also varies within a digit (a loop rounder, a bar longer), which is what the
    elastic distortions of Simard et al. (2003) teach a network trained on MNIST."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(tf.stack([rng_seed, 0]), 6)
    warped = warp(
        images,
        angle=tf.random.stateless_uniform([n], seeds[0], -ANGLE, ANGLE),
        shear=tf.random.stateless_uniform([n], seeds[1], -SHEAR, SHEAR),
        zoom=tf.random.stateless_uniform([n], seeds[2], -ZOOM, ZOOM),
        shift=tf.random.stateless_uniform([n, 2], seeds[3], -SHIFT, SHIFT),
        thickness=tf.random.stateless_uniform([n], seeds[4], -THICKNESS, THICKNESS),
    )
    if elastic <= 0.0:
        return warped
    coarse = tf.random.stateless_normal([n, ELASTIC_GRID, ELASTIC_GRID, 2], seeds[5], stddev=elastic)
    return bend(warped, tf.image.resize(coarse, [SIZE, SIZE], method="bicubic"))


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
