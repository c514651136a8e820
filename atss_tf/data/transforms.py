"""Image and box transforms (TensorFlow ops, traceable, usable in tf.data).

Training and evaluation images go through ``decode -> resize -> [flip] -> pad``:

* **resize** keeps the aspect ratio: shorter side ``min_size`` (one value drawn
  per image among several for multi-scale training), longer side at most
  ``max_size``, with the rounding of the official ``Resize.get_size``
  (maskrcnn-benchmark / ATSS); bilinear with antialiasing like PIL.
* **flip** (training) mirrors the image and the boxes: ``x1' = W - x2``.
* **pad** places the image top-left on a static canvas, the smallest of
  ``data.canvases`` that holds it, preferring canvases of its orientation. If
  none holds it, the image is scaled down further to fit the canvas allowing the
  largest scale. The padding value is the model's pixel mean (RGB), so the
  padded area is 0 after the model's normalisation, like the official code that
  pads the normalised tensor with zeros.

Boxes are continuous ``[x1, y1, x2, y2]`` pixels (ATSS_SPEC §0); they are
scaled per axis by ``resized / original``.

``image_info`` (float32 ``[4, 2]``, ``[B, 4, 2]`` batched), rows ``(y, x)``::

    [[original_height, original_width],
     [resized_height,  resized_width ],   # valid image area on the canvas
     [y_scale,         x_scale       ],   # resized / original
     [canvas_height,   canvas_width  ]]

:func:`boxes_to_original` maps predicted canvas boxes back with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import tensorflow as tf

from atss_tf.boxes import clip_boxes, flip_horizontal
from atss_tf.data.image_files import IMAGE_MAGIC


@dataclass(frozen=True)
class TransformConfig:
    """What the transforms need, independent of the full config.

    Attributes:
        min_size: shorter-side sizes; one is drawn per image when several.
        max_size: longest side after resizing.
        canvases: static ``(height, width)`` canvases.
        flip_prob: horizontal flip probability (0 in evaluation).
        pad_value: RGB padding value (the model's pixel mean).
        max_instances: ground-truth slots per image.
    """

    min_size: tuple[int, ...] = (800,)
    max_size: int = 1333
    canvases: tuple[tuple[int, int], ...] = ((896, 1344), (1344, 896))
    flip_prob: float = 0.0
    pad_value: tuple[float, float, float] = (0.0, 0.0, 0.0)
    max_instances: int = 100

    @classmethod
    def from_config(cls, config, training: bool) -> TransformConfig:
        """From a :class:`atss_tf.config.Config`. Evaluation uses the largest
        ``data.min_size`` (the official test size) and no flip."""
        data = config.data
        min_size = tuple(int(s) for s in data.min_size)
        return cls(
            min_size=min_size if training else (max(min_size),),
            max_size=int(data.max_size),
            canvases=tuple((int(h), int(w)) for h, w in data.canvases),
            flip_prob=float(data.flip_prob) if training else 0.0,
            pad_value=rgb_pixel_mean(config.model),
            max_instances=int(data.max_instances),
        )

    @classmethod
    def for_detector(cls, detector_config) -> TransformConfig:
        """The test-time transform a :class:`~atss_tf.config.DetectorConfig`
        carries (its ``test_size``, ``max_size`` and ``canvases``)."""
        return cls(
            min_size=(int(detector_config.test_size),),
            max_size=int(detector_config.max_size),
            canvases=tuple((int(h), int(w)) for h, w in detector_config.canvases),
            pad_value=rgb_pixel_mean(detector_config.model),
        )

    @property
    def random(self) -> bool:
        return len(self.min_size) > 1 or self.flip_prob > 0


def rgb_pixel_mean(model_config) -> tuple[float, float, float]:
    """``ModelConfig.pixel_mean`` in RGB order (it is BGR when ``input_bgr``)."""
    mean = tuple(float(v) for v in model_config.pixel_mean)
    return mean[::-1] if model_config.input_bgr else mean


def image_format_flags(encoded: tf.Tensor) -> dict[str, tf.Tensor]:
    """``{"jpeg": bool, "png": .., "gif": .., "bmp": ..}`` scalars from the first
    bytes of an encoded image (tf ops): :data:`atss_tf.data.image_files.IMAGE_MAGIC`
    in the graph."""
    flags: dict[str, tf.Tensor] = {}
    for magic, fmt in IMAGE_MAGIC.items():
        hit = tf.equal(tf.strings.substr(encoded, 0, len(magic)), magic)
        flags[fmt] = flags[fmt] | hit if fmt in flags else hit
    return flags


def decode_image(encoded: tf.Tensor, name: tf.Tensor | str = "") -> tf.Tensor:
    """Decode JPEG / PNG / GIF / BMP bytes -> ``uint8 [h, w, 3]``.

    The format is checked from the first bytes before decoding; a file that is
    not an image fails with an error naming ``name`` (a file name or id).
    Decoding errors of a damaged file of a known format are TensorFlow's own;
    the data readers find damaged files before decoding (``data.image_check``,
    :mod:`atss_tf.data.image_files`).
    """
    head = tf.strings.substr(encoded, 0, 8)
    known = tf.reduce_any(tf.stack(list(image_format_flags(encoded).values())))
    check = tf.debugging.Assert(
        known,
        ["Cannot decode image", name, "it is not a JPEG/PNG/GIF/BMP file; first bytes:", head],
    )
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def official_resize_size(height, width, min_size, max_size: int | None) -> tf.Tensor:
    """Resized ``(height, width)`` int32 ``[2]`` by the official rule.

    ``size = min_size``; if ``max/min * size > max_size`` then
    ``size = round(max_size * min / max)`` (half to even, like Python's
    ``round``); the shorter side becomes ``size`` and the longer side
    ``int(size * long / short)`` (truncated). Computed in float64 so it agrees
    with the official Python arithmetic.
    """
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    size = tf.cast(min_size, tf.float64)
    short = tf.minimum(h, w)
    long = tf.maximum(h, w)
    if max_size is not None:
        max_size = tf.cast(max_size, tf.float64)
        size = tf.where(long / short * size > max_size, tf.round(max_size * short / long), size)
    portrait = w < h
    out_h = tf.where(portrait, tf.floor(size * h / w), size)
    out_w = tf.where(portrait, size, tf.floor(size * w / h))
    return tf.cast(tf.stack([out_h, out_w]), tf.int32)


# Canvas sides are multiples of this (the official SIZE_DIVISIBILITY; schema CANVASES).
CANVAS_MULTIPLE = 32


def exact_canvas(size: Sequence[int], multiple: int = CANVAS_MULTIPLE) -> tuple[int, int]:
    """``(height, width)`` rounded up to multiples of ``multiple``: the
    official padding of one image (``SIZE_DIVISIBILITY``)."""
    return tuple(int(math.ceil(int(s) / multiple) * multiple) for s in size)


def fitting_canvases(
    min_size: int, max_size: int, multiple: int = CANVAS_MULTIPLE
) -> tuple[tuple[int, int], ...]:
    """The canvases that hold every image the official resize to shorter side
    ``min_size``, longer side at most ``max_size`` makes: a landscape
    ``(min, max)`` and a portrait ``(max, min)`` one, each rounded up by
    :func:`exact_canvas` (one canvas when ``min_size == max_size``). What the
    test-time sizes get when they are changed without canvases (export,
    ``predict``/``evaluate`` with ``--set data.min_size``), and each TTA pass's
    catch-all canvases."""
    short, long = exact_canvas((min_size, max_size), multiple)
    return tuple(dict.fromkeys([(short, long), (long, short)]))


def choose_canvas(
    height, width, canvases: Sequence[tuple[int, int]]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pick the canvas for an image of ``height`` x ``width`` (after resizing).

    Among canvases that hold the image, the smallest (by area) whose
    orientation matches (landscape ``w >= h``; a square canvas matches both)
    wins, else the smallest of the other orientation. If none holds it, the
    canvas allowing the largest downscale factor ``min(Hc / h, Wc / w)`` wins
    (ties: matching orientation, then list order).

    Returns:
        ``(index, scale)``: int32 canvas index and the float64 factor ``<= 1``
        the image must be further scaled by (1 when it fits).
    """
    ch = tf.constant([float(c[0]) for c in canvases], tf.float64)
    cw = tf.constant([float(c[1]) for c in canvases], tf.float64)
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    n = len(canvases)
    order = tf.range(n, dtype=tf.float64)
    match = tf.equal(w >= h, cw >= ch) | tf.equal(cw, ch)
    mismatch = tf.cast(tf.logical_not(match), tf.float64)
    fits = (h <= ch) & (w <= cw)
    area = ch * cw
    big = 4.0 * float(max(a * b for a, b in canvases)) + 1.0
    fit_key = tf.where(fits, area + mismatch * big, tf.constant(float("inf"), tf.float64))
    fit_index = tf.argmin(fit_key, output_type=tf.int32)

    factor = tf.minimum(ch / h, cw / w)
    best = tf.reduce_max(factor)
    shrink_key = tf.where(factor >= best, mismatch * n + order, tf.constant(2.0 * n, tf.float64))
    shrink_index = tf.argmin(shrink_key, output_type=tf.int32)

    any_fit = tf.reduce_any(fits)
    index = tf.where(any_fit, fit_index, shrink_index)
    scale = tf.where(any_fit, tf.constant(1.0, tf.float64), best)
    return index, scale


def flip_left_right(image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirror ``image [h, w, C]`` and ``boxes [n, 4]``: ``x1' = w - x2, x2' = w - x1``."""
    return tf.reverse(image, axis=[1]), flip_horizontal(boxes, tf.shape(image)[1])


def pad_to_canvas(
    image: tf.Tensor, canvas_height, canvas_width, pad_value: Sequence[float]
) -> tf.Tensor:
    """Place ``image [h, w, 3]`` float32 top-left on a ``[Hc, Wc, 3]`` canvas
    filled with ``pad_value`` (per channel); image pixels are copied exactly."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    paddings = [[0, canvas_height - h], [0, canvas_width - w]]
    channels = [
        tf.pad(image[..., c], paddings, constant_values=float(pad_value[c])) for c in range(3)
    ]
    return tf.stack(channels, axis=-1)


def pad_instances(
    boxes: tf.Tensor, labels: tf.Tensor, is_crowd: tf.Tensor, max_instances: int
) -> dict[str, tf.Tensor]:
    """Pad (or truncate, keeping the first) ground truth to ``max_instances``.

    Returns:
        ``gt_boxes`` float32 ``[M, 4]`` (zeros in padding), ``gt_labels`` int32
        ``[M]`` (0 in padding), ``gt_mask`` bool ``[M]`` (a real, non-crowd box:
        a training target), ``gt_is_crowd`` bool ``[M]`` (crowd boxes kept as
        ignore regions; their ``gt_mask`` is False).
    """
    m = max_instances
    n = tf.minimum(tf.shape(boxes)[0], m)
    pad = [[0, m - n]]
    gt_boxes = tf.pad(tf.cast(boxes[:n], tf.float32), pad + [[0, 0]])
    gt_labels = tf.pad(tf.cast(labels[:n], tf.int32), pad)
    crowd = tf.pad(tf.cast(is_crowd[:n], tf.bool), pad)
    valid = tf.range(m) < n
    out = {
        "gt_boxes": gt_boxes,
        "gt_labels": gt_labels,
        "gt_mask": valid & tf.logical_not(crowd),
        "gt_is_crowd": crowd,
    }
    out["gt_boxes"].set_shape([m, 4])
    for k in ("gt_labels", "gt_mask", "gt_is_crowd"):
        out[k].set_shape([m])
    return out


def make_image_info(original_size, resized_size, canvas_size) -> tf.Tensor:
    """``image_info`` float32 ``[4, 2]`` (module docstring) from int ``(h, w)`` pairs."""
    original = tf.cast(original_size, tf.float32)
    resized = tf.cast(resized_size, tf.float32)
    canvas = tf.cast(canvas_size, tf.float32)
    return tf.stack([original, resized, resized / original, canvas])


def valid_image_size(image_info: tf.Tensor) -> tf.Tensor:
    """The resized, unpadded ``(h, w)`` ``[..., 2]`` of ``image_info`` ``[..., 4, 2]``:
    the area detections are clipped to."""
    return tf.cast(image_info, tf.float32)[..., 1, :]


def boxes_to_original(boxes: tf.Tensor, image_info: tf.Tensor) -> tf.Tensor:
    """Map canvas boxes back to original-image pixels: divide by the scale and
    clip to the original size.

    Args:
        boxes: float ``[..., N, 4]`` continuous xyxy on the canvas.
        image_info: ``[..., 4, 2]`` with the same leading shape.

    Returns:
        ``[..., N, 4]`` boxes in the original image.
    """
    boxes = tf.convert_to_tensor(boxes)
    info = tf.cast(image_info, boxes.dtype)
    sy = info[..., 2, 0][..., None]
    sx = info[..., 2, 1][..., None]
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    out = tf.stack([x1 / sx, y1 / sy, x2 / sx, y2 / sy], axis=-1)
    return clip_boxes(out, info[..., 0, 0][..., None], info[..., 0, 1][..., None])


def transform(
    image: tf.Tensor,
    boxes: tf.Tensor,
    params: TransformConfig,
    seed: tf.Tensor | None = None,
) -> dict[str, tf.Tensor]:
    """Resize, maybe flip, and pad one image with its boxes.

    Args:
        image: ``uint8`` (or float) ``[h, w, 3]`` RGB.
        boxes: float32 ``[n, 4]`` continuous xyxy in ``image`` pixels.
        params: the transform settings.
        seed: int ``[2]`` stateless seed; required when ``params`` draws a
            scale or flips.

    Returns:
        ``image`` float32 ``[Hc, Wc, 3]`` RGB 0..255 (static shape with a
        single canvas), ``boxes`` float32 ``[n, 4]`` on the canvas,
        ``image_info`` float32 ``[4, 2]``, ``canvas_index`` int32 scalar.
    """
    if params.random and seed is None:
        raise ValueError("transform: a seed is needed with multi-scale sizes or flip_prob > 0")
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    sizes = tf.constant(params.min_size, tf.int32)
    if len(params.min_size) > 1:
        pick = tf.random.stateless_uniform(
            [], seed, minval=0, maxval=len(params.min_size), dtype=tf.int32
        )
        min_size = sizes[pick]
    else:
        min_size = sizes[0]
    size = official_resize_size(height, width, min_size, params.max_size)
    index, shrink = choose_canvas(size[0], size[1], params.canvases)
    size64 = tf.cast(size, tf.float64)
    size = tf.cast(tf.maximum(tf.floor(size64 * shrink), 1.0), tf.int32)

    resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
    scale = tf.cast(size, tf.float32) / tf.cast(tf.stack([height, width]), tf.float32)
    boxes = tf.cast(boxes, tf.float32) * tf.stack([scale[1], scale[0], scale[1], scale[0]])

    if params.flip_prob > 0:
        flip_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        do_flip = tf.random.stateless_uniform([], flip_seed) < params.flip_prob
        resized, boxes = tf.cond(
            do_flip, lambda: flip_left_right(resized, boxes), lambda: (resized, boxes)
        )

    canvases = tf.constant(params.canvases, tf.int32)
    canvas = canvases[index]
    padded = pad_to_canvas(resized, canvas[0], canvas[1], params.pad_value)
    if len(params.canvases) == 1:
        padded.set_shape([params.canvases[0][0], params.canvases[0][1], 3])
    else:
        padded.set_shape([None, None, 3])
    return {
        "image": padded,
        "boxes": boxes,
        "image_info": make_image_info(tf.stack([height, width]), size, canvas),
        "canvas_index": index,
    }
