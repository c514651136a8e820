"""A literal NumPy transcription of the official modulated deformable convolution.

Loop for loop what ``modulated_deformable_im2col_gpu_kernel`` and its
``dmcn_im2col_bilinear`` compute (fixture README ``official_atss_dcn``), one
output value at a time: slow, for tiny shapes only, and independent of the
gathers of :mod:`atss_tf.model.deformable`. NHWC, like the project.
"""

from __future__ import annotations

import math

import numpy as np


def _bilinear(image: np.ndarray, h: float, w: float) -> np.ndarray:
    """``dmcn_im2col_bilinear``: ``image`` ``[H, W, C]`` at ``(h, w)``, corners
    outside the map counting 0."""
    height, width = image.shape[:2]
    h_low, w_low = math.floor(h), math.floor(w)
    h_high, w_high = h_low + 1, w_low + 1
    lh, lw = h - h_low, w - w_low
    hh, hw = 1 - lh, 1 - lw
    zero = np.zeros(image.shape[-1], dtype=np.float64)

    def at(y: int, x: int) -> np.ndarray:
        return image[y, x] if 0 <= y < height and 0 <= x < width else zero

    return (
        hh * hw * at(h_low, w_low)
        + hh * lw * at(h_low, w_high)
        + lh * hw * at(h_high, w_low)
        + lh * lw * at(h_high, w_high)
    )


def deform_conv_reference(
    inputs: np.ndarray,
    offsets: np.ndarray,
    mask: np.ndarray,
    kernel: np.ndarray,
    strides: int = 1,
    groups: int = 1,
) -> np.ndarray:
    """``inputs`` ``[B, H, W, C]``, ``offsets`` ``[B, Ho, Wo, 18]`` (tap ``k``:
    ``dy`` in ``2k``, ``dx`` in ``2k + 1``), ``mask`` ``[B, Ho, Wo, 9]``,
    ``kernel`` ``[3, 3, C / groups, F]`` -> ``[B, Ho, Wo, F]`` float64
    (padding 1, dilation 1, no bias)."""
    x = np.asarray(inputs, np.float64)
    batch, height, width, channels = x.shape
    filters = kernel.shape[-1]
    out_h, out_w = offsets.shape[1:3]
    c_in, f_out = channels // groups, filters // groups
    out = np.zeros((batch, out_h, out_w, filters))
    for b in range(batch):
        for y in range(out_h):
            for xo in range(out_w):
                for i in range(3):
                    for j in range(3):
                        k = 3 * i + j
                        h = y * strides - 1 + i + float(offsets[b, y, xo, 2 * k])
                        w = xo * strides - 1 + j + float(offsets[b, y, xo, 2 * k + 1])
                        if h <= -1 or w <= -1 or h >= height or w >= width:
                            continue
                        sample = _bilinear(x[b], h, w) * float(mask[b, y, xo, k])
                        for g in range(groups):
                            s = sample[g * c_in : (g + 1) * c_in]
                            out[b, y, xo, g * f_out : (g + 1) * f_out] += (
                                s @ kernel[i, j, :, g * f_out : (g + 1) * f_out]
                            )
    return out
