"""The test-time passes and what each does to its detections (official ``im_detect_bbox_aug_vote``).

A pass resizes the image by the official rule (shorter side ``min_size``,
longer side at most ``max_size``, :func:`atss_tf.data.transforms.official_resize_size`)
with PIL's bilinear filter (:func:`atss_tf.data.pil_resize.pil_bilinear_resize`),
maybe flips it, and runs the network with the normal post-processing on a
canvas of its own (the resized image padded to a multiple of
``tta.canvas_multiple``, like the official ``SIZE_DIVISIBILITY``). Its
detections, continuous xyxy in its resized pixels, then go through
:func:`pass_detections`: the flip undone, the scale's area filter, and the
boxes scaled to pass 0's image. A pass and its flip share the resize and the
canvas: they run as one batch of two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from atss_tf import boxes as box_ops
from atss_tf.config import TTAConfig
from atss_tf.data.transforms import (
    exact_canvas,
    fitting_canvases,
    official_resize_size,
)


@dataclass(frozen=True)
class TTAPass:
    """One test-time pass.

    Attributes:
        name: ``identity``, ``identity_hflip``, ``scale400``, ``scale400_hflip``, ...
            (the fixture's names).
        min_size: the resize's shorter side.
        max_size: the resize's longer-side cap.
        flip: the image is mirrored before the network (detections mirrored back).
        area_range: boxes are kept when ``min^2 < area < max^2`` (pass pixels);
            None keeps all (the test-size passes).
    """

    name: str
    min_size: int
    max_size: int
    flip: bool = False
    area_range: tuple[float, float] | None = None

    @property
    def resize(self) -> tuple[int, int]:
        """``(min_size, max_size)``: passes with the same resize share a canvas."""
        return self.min_size, self.max_size


def tta_passes(tta: TTAConfig, test_size: int, test_max_size: int) -> list[TTAPass]:
    """The passes of ``tta`` in the official order: the test size, its flip,
    then each scale and its flip (``tta.test_flip`` / ``tta.scale_flip``)."""
    passes = [TTAPass("identity", int(test_size), int(test_max_size))]
    if tta.test_flip:
        passes.append(TTAPass("identity_hflip", int(test_size), int(test_max_size), flip=True))
    for scale, (low, high) in zip(tta.scales, tta.scale_ranges):
        cap = tta.cap(scale, test_max_size)
        area = (float(low), float(high))
        passes.append(TTAPass(f"scale{scale}", int(scale), int(cap), area_range=area))
        if tta.scale_flip:
            passes.append(TTAPass(f"scale{scale}_hflip", int(scale), int(cap), True, area))
    return passes


def group_passes(passes: list[TTAPass]) -> list[list[int]]:
    """Indices of the passes that share a resize (a scale and its flip), in order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(passes):
        groups.setdefault(p.resize, []).append(i)
    return list(groups.values())


def resized_size(height: int, width: int, p: TTAPass) -> tuple[int, int]:
    """The ``(height, width)`` pass ``p`` resizes an image to (official rule)."""
    size = official_resize_size(height, width, p.min_size, p.max_size).numpy()
    return int(size[0]), int(size[1])


def serving_canvases(
    passes: list[TTAPass],
    groups: list[list[int]],
    multiple: int,
    image_sizes: Sequence[tuple[int, int]] = (),
) -> list[list[tuple[int, int]]]:
    """A fixed canvas list per pass group, for a graph that cannot compile a
    canvas per image size (the TTA SavedModel): the exact canvases of
    ``image_sizes`` (original ``(h, w)``; an image of such a size runs as in
    the Python TTA), then a landscape and a portrait canvas that hold any
    image the group's resize makes (:func:`~atss_tf.data.transforms.fitting_canvases`)."""
    out = []
    for indices in groups:
        p = passes[indices[0]]
        listed = [exact_canvas(resized_size(h, w, p), multiple) for h, w in image_sizes]
        listed += fitting_canvases(p.min_size, p.max_size, multiple)
        out.append(list(dict.fromkeys(listed)))
    return out


def area_bounds(p: TTAPass) -> tuple[float, float]:
    """``(min^2, max^2)`` of the pass's area filter; ``(-inf, inf)``: none."""
    if p.area_range is None:
        return -math.inf, math.inf
    low, high = p.area_range
    return low * low, high * high


def pass_rows(passes: list[TTAPass], indices: list[int], size, first_size) -> dict[str, np.ndarray]:
    """What :func:`pass_detections` needs per batch row (one row per pass of a
    group): ``sizes`` float32 ``[B, 2]`` (resized h, w), ``flip`` bool ``[B]``,
    ``area_bounds`` float32 ``[B, 2]``, ``to_first`` float32 ``[B, 2]`` (x, y
    factors to pass 0's image, ``w0 / w`` and ``h0 / h`` in float64 first like
    the official Python floats)."""
    h, w = size
    h0, w0 = first_size
    rows = [passes[i] for i in indices]
    return {
        "sizes": np.array([[h, w]] * len(rows), np.float32),
        "flip": np.array([p.flip for p in rows], bool),
        "area_bounds": np.array([area_bounds(p) for p in rows], np.float32),
        "to_first": np.array([[w0 / w, h0 / h]] * len(rows), np.float32),
    }


def pass_detections(
    detections: dict[str, tf.Tensor], rows: dict[str, tf.Tensor], inclusive: bool
) -> dict[str, tf.Tensor]:
    """A batch of passes' post-processed detections -> the stages of the fixture.

    Args:
        detections: the model's ``predict_step`` output on the (flipped)
            resized images: ``boxes`` ``[B, D, 4]`` continuous xyxy clipped to
            the resized image, ``scores``, ``classes``, ``num_detections``.
        rows: :func:`pass_rows`'s arrays (or tensors).
        inclusive: scale boxes as the authors' inclusive ``BoxList.resize``
            (``model.inclusive_geometry``), see :func:`atss_tf.boxes.scale_boxes`.

    Returns:
        ``boxes`` ``[B, D, 4]`` in the pass's resized pixels with the flip
        undone (``x1' = w - x2``: the official inclusive ``w - x2 - 1``),
        ``rescaled`` ``[B, D, 4]`` the same boxes in pass 0's pixels,
        ``scores`` ``[B, D]``, ``classes`` ``[B, D]`` int32, ``live`` bool
        ``[B, D]`` (a detection) and ``kept`` bool ``[B, D]`` (a detection the
        area filter keeps: ``min^2 < area < max^2``, the continuous area being
        the official inclusive ``(x2 - x1 + 1) * (y2 - y1 + 1)``).
    """
    boxes = detections["boxes"]
    d = boxes.shape[1]
    sizes = tf.cast(rows["sizes"], tf.float32)
    flip = tf.cast(rows["flip"], tf.bool)
    bounds = tf.cast(rows["area_bounds"], tf.float32)
    to_first = tf.cast(rows["to_first"], tf.float32)
    live = tf.range(d)[None, :] < tf.cast(detections["num_detections"], tf.int32)[:, None]
    boxes = tf.where(flip[:, None, None], box_ops.flip_horizontal(boxes, sizes[:, 1:2]), boxes)
    area = box_ops.area(boxes)
    kept = live & (area > bounds[:, 0:1]) & (area < bounds[:, 1:2])
    rescaled = box_ops.scale_boxes(boxes, to_first[:, 0:1], to_first[:, 1:2], inclusive)
    return {
        "boxes": boxes,
        "rescaled": rescaled,
        "scores": detections["scores"],
        "classes": tf.cast(detections["classes"], tf.int32),
        "live": live,
        "kept": kept,
    }
