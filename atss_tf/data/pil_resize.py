"""PIL's bilinear resize in TensorFlow ops, integer for integer.

The authors' test-time augmentation resizes with ``PIL.Image.resize(...,
BILINEAR)`` (torchvision's ``F.resize`` on a PIL image). PIL does not compute
what ``tf.image.resize`` does: it resizes in two separable passes, horizontal
first, each rounding to uint8, with a triangle filter whose support grows with
the shrink factor (so it antialiases when shrinking) and whose weights are
normalised per output pixel and quantised to 22-bit fixed point. A single
``tf.image.resize(antialias=True)`` in float32 differs from it by one level on
about 15% of the pixels; two ``tf.image.resize`` passes with rounding between
them on 0.2-0.7%. This module repeats PIL's arithmetic (Pillow's
``Resample.c``: ``precompute_coeffs``, ``normalize_coeffs_8bpc``,
``ImagingResampleHorizontal_8bpc`` / ``Vertical``) in int32, so the result is
PIL's exactly: the horizontal pass first, as every Pillow before 13 (the
authors' environment). Pillow 13 may start with the vertical pass (when it
shrinks more), which moves some pixels by one level; the authors' order is the
reference here.

Pixel convention: PIL's output pixel ``i`` samples the input at
``(i + 0.5) * in / out`` (pixel centres at half integers), the convention of
``tf.image.resize``'s ``half_pixel_centers``.

Every size may be a tensor: the ops trace into a ``tf.function`` or a
SavedModel with dynamic image sizes.
"""

from __future__ import annotations

import tensorflow as tf

PRECISION_BITS = 22  # Pillow: 32 - 8 bits of the value - 2 bits of headroom


def _coefficients(in_size, out_size) -> tuple[tf.Tensor, tf.Tensor]:
    """Taps of one axis: ``(index [out, K] int32, weight [out, K] int32)``.

    ``weight`` is the fixed-point coefficient (sum ~ ``2**22``); taps beyond a
    pixel's window have weight 0 (their index is clamped into the image).
    """
    n_in = tf.cast(in_size, tf.float64)
    n_out = tf.cast(out_size, tf.float64)
    scale = n_in / n_out
    filterscale = tf.maximum(scale, 1.0)
    support = filterscale  # the bilinear (triangle) filter's support is 1
    ksize = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.range(n_out, dtype=tf.float64) + 0.5) * scale
    # C's (int) truncates toward zero; negatives are clamped to 0 after it anyway.
    xmin = tf.maximum(tf.math.floor(center - support + 0.5), 0.0)
    xmax = tf.minimum(tf.math.floor(center + support + 0.5), n_in) - xmin
    x = tf.range(tf.cast(ksize, tf.float64), dtype=tf.float64)[None, :]
    inside = x < xmax[:, None]
    # Pillow multiplies by the reciprocal (ss = 1.0 / filterscale): the same rounding.
    distance = tf.abs((x + xmin[:, None] - center[:, None] + 0.5) * (1.0 / filterscale))
    w = tf.where(inside, tf.maximum(1.0 - distance, 0.0), 0.0)
    total = tf.reduce_sum(w, axis=1, keepdims=True)
    w = tf.math.divide_no_nan(w, total)
    weight = tf.cast(tf.math.floor(w * (1 << PRECISION_BITS) + 0.5), tf.int32)
    index = tf.minimum(tf.cast(x + xmin[:, None], tf.int32), tf.cast(in_size, tf.int32) - 1)
    return index, weight


def _resample(image: tf.Tensor, out_size, axis: int) -> tf.Tensor:
    """One 8-bit pass of PIL along ``axis`` (0: rows, 1: columns) of an int32
    ``[h, w, C]`` image of values 0..255."""
    index, weight = _coefficients(tf.shape(image)[axis], out_size)
    ksize = tf.shape(index)[1]
    shape = [1, -1, 1] if axis == 1 else [-1, 1, 1]

    def tap(k, acc):
        values = tf.gather(image, index[:, k], axis=axis)
        return k + 1, acc + values * tf.reshape(weight[:, k], shape)

    out_shape = tf.tensor_scatter_nd_update(tf.shape(image), [[axis]], [out_size])
    start = tf.fill(out_shape, tf.constant(1 << (PRECISION_BITS - 1), tf.int32))
    _, acc = tf.while_loop(lambda k, _: k < ksize, tap, [tf.constant(0), start])
    # clip8: an arithmetic shift (floor) of the rounded sum, clamped to 0..255.
    return tf.clip_by_value(tf.bitwise.right_shift(acc, PRECISION_BITS), 0, 255)


def pil_bilinear_resize(image: tf.Tensor, size) -> tf.Tensor:
    """``PIL.Image.fromarray(image).resize((w, h), Image.BILINEAR)`` in TF ops.

    Args:
        image: ``uint8 [h, w, C]``.
        size: ``(height, width)`` of the output (ints or an int tensor ``[2]``).

    Returns:
        ``uint8 [height, width, C]``. An axis whose size does not change is
        copied unchanged (PIL skips its pass).
    """
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise TypeError(f"pil_bilinear_resize takes a uint8 image, got {image.dtype.name}")
    size = tf.cast(size, tf.int32)
    x = tf.cast(image, tf.int32)
    shape = tf.shape(x)
    x = tf.cond(tf.equal(shape[1], size[1]), lambda: x, lambda: _resample(x, size[1], axis=1))
    x = tf.cond(tf.equal(shape[0], size[0]), lambda: x, lambda: _resample(x, size[0], axis=0))
    return tf.cast(x, tf.uint8)
