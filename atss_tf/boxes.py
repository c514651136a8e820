"""Box maths: the one definition used by targets, losses, post-processing and export.

Convention (ATSS_SPEC §0): continuous pixel coordinates, a box is
``[x1, y1, x2, y2]`` float32 with width ``x2 - x1``; pixel ``i`` covers
``[i, i + 1)``. No "+1" anywhere. Functions accept any leading batch shape and
broadcast like numpy: ``iou(a[:, None], b[None])`` is a pairwise matrix.

The authors' code works in inclusive pixel indices; where that changes a number
(loss geometry, ATSS_SPEC §0.3) the caller passes ``inclusive=True`` /
``offset=0.5`` rather than a second copy of the formula, and
:func:`to_inclusive` / :func:`from_inclusive` are the one place the 1-pixel
shift between the two conventions is written.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

# Decode clamps dw/dh (after dividing by their weights) at log(1000 / 16) like
# the authors' BoxCoder; there is no lower clamp.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _inclusive_shift(boxes):
    if isinstance(boxes, np.ndarray):
        return np.array([0.0, 0.0, 1.0, 1.0], boxes.dtype)
    return tf.constant([0.0, 0.0, 1.0, 1.0], boxes.dtype)


def to_inclusive(boxes):
    """Continuous ``[..., 4]`` boxes -> the authors' inclusive pixel indices
    (``x2 - 1``, ``y2 - 1``): a box covering pixels 0..9 is ``[0, 10)`` here and
    ``[0, 9]`` there. NumPy in, NumPy out; tensors in, tensors out."""
    return boxes - _inclusive_shift(boxes)


def from_inclusive(boxes):
    """The inverse of :func:`to_inclusive` (``x2 + 1``, ``y2 + 1``)."""
    return boxes + _inclusive_shift(boxes)


def area(boxes: tf.Tensor) -> tf.Tensor:
    """Area of ``[..., 4]`` boxes -> ``[...]``; negative extents count as 0."""
    w = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    h = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return w * h


def centers(boxes: tf.Tensor) -> tf.Tensor:
    """Centers ``[..., 2]`` (cx, cy) of ``[..., 4]`` boxes."""
    return tf.stack(
        [(boxes[..., 0] + boxes[..., 2]) * 0.5, (boxes[..., 1] + boxes[..., 3]) * 0.5], axis=-1
    )


def iou(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """Broadcasting IoU of ``[..., 4]`` boxes -> ``[...]`` in [0, 1].

    Zero-area pairs (e.g. padded ground truth of all zeros) give 0, not NaN.
    """
    ix1 = tf.maximum(boxes1[..., 0], boxes2[..., 0])
    iy1 = tf.maximum(boxes1[..., 1], boxes2[..., 1])
    ix2 = tf.minimum(boxes1[..., 2], boxes2[..., 2])
    iy2 = tf.minimum(boxes1[..., 3], boxes2[..., 3])
    inter = tf.maximum(ix2 - ix1, 0.0) * tf.maximum(iy2 - iy1, 0.0)
    union = area(boxes1) + area(boxes2) - inter
    return tf.math.divide_no_nan(inter, union)


def giou_loss(pred: tf.Tensor, target: tf.Tensor, inclusive: bool = False) -> tf.Tensor:
    """Per-box ``1 - GIoU`` of ``[..., 4]`` predicted and target boxes -> ``[...]``.

    As in the authors' GIoULoss: predicted ``x2 = max(x1, x2)`` (and y), eps 1e-7
    on the union and the enclosing area. ``inclusive=True`` measures both boxes
    as the authors' code does, i.e. shrunk by 1 px at x2 and y2 (ATSS_SPEC §0.3).
    """
    if inclusive:
        pred, target = to_inclusive(pred), to_inclusive(target)
    px1, py1, px2, py2 = tf.unstack(pred, axis=-1)
    tx1, ty1, tx2, ty2 = tf.unstack(target, axis=-1)
    px2 = tf.maximum(px1, px2)
    py2 = tf.maximum(py1, py2)
    pred_area = (px2 - px1) * (py2 - py1)
    target_area = (tx2 - tx1) * (ty2 - ty1)
    iw = tf.minimum(px2, tx2) - tf.maximum(px1, tx1)
    ih = tf.minimum(py2, ty2) - tf.maximum(py1, ty1)
    inter = tf.where((iw > 0) & (ih > 0), iw * ih, tf.zeros_like(iw))
    enclosing = (tf.maximum(px2, tx2) - tf.minimum(px1, tx1)) * (
        tf.maximum(py2, ty2) - tf.minimum(py1, ty1)
    ) + 1e-7
    union = pred_area + target_area - inter + 1e-7
    giou = inter / union - (enclosing - union) / enclosing
    return 1.0 - giou


def ltrb_distances(points: tf.Tensor, boxes: tf.Tensor, offset: float = 0.0) -> tf.Tensor:
    """Distances ``[..., 4]`` (l, t, r, b) from ``[..., 2]`` points to box sides.

    ``offset`` is subtracted from every distance: 0.5 reproduces the authors'
    inclusive-pixel measurements (ATSS_SPEC §0.3).
    """
    l = points[..., 0] - boxes[..., 0]
    t = points[..., 1] - boxes[..., 1]
    r = boxes[..., 2] - points[..., 0]
    b = boxes[..., 3] - points[..., 1]
    return tf.stack([l, t, r, b], axis=-1) - offset


def centerness(ltrb: tf.Tensor) -> tf.Tensor:
    """FCOS/ATSS centerness ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``.

    ``ltrb``: ``[..., 4]`` positive distances -> ``[...]``. Non-positive inputs
    (background anchors) give 0, never NaN.
    """
    l, t, r, b = tf.unstack(ltrb, axis=-1)
    lr = tf.math.divide_no_nan(tf.minimum(l, r), tf.maximum(l, r))
    tb = tf.math.divide_no_nan(tf.minimum(t, b), tf.maximum(t, b))
    return tf.sqrt(tf.maximum(lr * tb, 0.0))


def clip_boxes(boxes: tf.Tensor, height, width) -> tf.Tensor:
    """Clip ``[..., 4]`` boxes to ``[0, width] x [0, height]``.

    ``height``/``width`` are scalars or tensors broadcastable to ``[...]``.
    """
    height = tf.cast(height, boxes.dtype)
    width = tf.cast(width, boxes.dtype)
    x1 = tf.clip_by_value(boxes[..., 0], 0.0, width)
    y1 = tf.clip_by_value(boxes[..., 1], 0.0, height)
    x2 = tf.clip_by_value(boxes[..., 2], 0.0, width)
    y2 = tf.clip_by_value(boxes[..., 3], 0.0, height)
    return tf.stack([x1, y1, x2, y2], axis=-1)


def flip_horizontal(boxes: tf.Tensor, width) -> tf.Tensor:
    """Mirror ``[..., 4]`` boxes in an image ``width`` wide: ``x1' = w - x2``,
    ``x2' = w - x1``. (The authors' inclusive ``x1' = w - x2 - 1`` is the same
    flip: their ``x2`` is ours minus 1.)"""
    width = tf.cast(width, boxes.dtype)
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    return tf.stack([width - x2, y1, width - x1, y2], axis=-1)


def scale_boxes(boxes: tf.Tensor, x_scale, y_scale, inclusive: bool = False) -> tf.Tensor:
    """``[..., 4]`` boxes with x times ``x_scale`` and y times ``y_scale``
    (scalars or tensors broadcastable to ``[...]``).

    ``inclusive=True`` scales as the authors' ``BoxList.resize`` does: their
    inclusive coordinates, i.e. ``x2 - 1`` scaled then plus 1 here (boxes
    stay 1 px longer than in continuous scaling by ``(1 - scale)``).
    """
    if inclusive:
        boxes = to_inclusive(boxes)
    x_scale = tf.cast(x_scale, boxes.dtype)
    y_scale = tf.cast(y_scale, boxes.dtype)
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    out = tf.stack([x1 * x_scale, y1 * y_scale, x2 * x_scale, y2 * y_scale], axis=-1)
    return from_inclusive(out) if inclusive else out


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """COCO ``[..., 4]`` ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` (NumPy, host side)."""
    boxes = np.asarray(boxes)
    return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:4]], axis=-1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``[..., 4]`` ``[x1, y1, x2, y2]`` -> COCO ``[x, y, w, h]`` (NumPy, host side)."""
    boxes = np.asarray(boxes)
    return np.concatenate([boxes[..., :2], boxes[..., 2:4] - boxes[..., :2]], axis=-1)


class BoxCoder:
    """BOX regression (ATSS_SPEC §2): deltas relative to the anchor.

    ``dx = wx * (gcx - acx) / aw``, ``dw = ww * log(gw / aw)``; decode clamps
    ``dw / ww`` and ``dh / wh`` at ``log(1000 / 16)``. In continuous coordinates
    this equals the authors' inclusive "+1" coder exactly.

    Args:
        weights: (wx, wy, ww, wh), default (10, 10, 5, 5).
    """

    def __init__(self, weights=(10.0, 10.0, 5.0, 5.0), inclusive: bool = False):
        self.weights = tuple(float(w) for w in weights)
        # Not used by the coding itself; losses and post-processing read it.
        self.inclusive = bool(inclusive)

    def encode(self, boxes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
        """``boxes``, ``anchors``: ``[..., 4]`` -> deltas ``[..., 4]``.

        Degenerate boxes (zero width, e.g. padding) would give -inf; callers
        only use the encoding of positive anchors, whose boxes are valid.
        """
        wx, wy, ww, wh = self.weights
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        acx = anchors[..., 0] + 0.5 * aw
        acy = anchors[..., 1] + 0.5 * ah
        gw = boxes[..., 2] - boxes[..., 0]
        gh = boxes[..., 3] - boxes[..., 1]
        gcx = boxes[..., 0] + 0.5 * gw
        gcy = boxes[..., 1] + 0.5 * gh
        return tf.stack(
            [
                wx * (gcx - acx) / aw,
                wy * (gcy - acy) / ah,
                ww * tf.math.log(gw / aw),
                wh * tf.math.log(gh / ah),
            ],
            axis=-1,
        )

    def decode(self, deltas: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
        """``deltas``, ``anchors``: ``[..., 4]`` -> boxes ``[..., 4]``."""
        wx, wy, ww, wh = self.weights
        anchors = tf.cast(anchors, deltas.dtype)
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        acx = anchors[..., 0] + 0.5 * aw
        acy = anchors[..., 1] + 0.5 * ah
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = tf.minimum(deltas[..., 2] / ww, BBOX_XFORM_CLIP)
        dh = tf.minimum(deltas[..., 3] / wh, BBOX_XFORM_CLIP)
        cx = dx * aw + acx
        cy = dy * ah + acy
        w = tf.exp(dw) * aw
        h = tf.exp(dh) * ah
        return tf.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


class PointCoder:
    """POINT regression (ATSS_SPEC §2, paper Table 2): distances from the anchor
    center to the four sides, in units of the stride.

    The stride is recovered from the anchor as ``anchor_width / anchor_scale``
    (the authors' formula ``w * (acx - x1) / aw`` with ``w = size / stride``), so
    only #A = 1 grids are meaningful. ``offset=0.5`` reproduces the authors'
    inclusive-pixel distances (each 0.5 px shorter, ATSS_SPEC §0.3).

    Args:
        anchor_scale: anchor side / stride (``AnchorConfig.octave_base_scale``).
        inclusive: the authors' inclusive-pixel geometry (distances 0.5 px shorter).
    """

    def __init__(self, anchor_scale: float = 8.0, inclusive: bool = False):
        self.anchor_scale = float(anchor_scale)
        self.inclusive = bool(inclusive)
        self.offset = 0.5 if inclusive else 0.0

    def _stride_and_center(self, anchors):
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        center = centers(anchors)
        return aw / self.anchor_scale, ah / self.anchor_scale, center

    def encode(self, boxes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
        sx, sy, center = self._stride_and_center(anchors)
        ltrb = ltrb_distances(center, boxes, self.offset)
        return ltrb / tf.stack([sx, sy, sx, sy], axis=-1)

    def decode(self, deltas: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
        anchors = tf.cast(anchors, deltas.dtype)
        sx, sy, center = self._stride_and_center(anchors)
        d = deltas * tf.stack([sx, sy, sx, sy], axis=-1) + self.offset
        cx, cy = center[..., 0], center[..., 1]
        return tf.stack([cx - d[..., 0], cy - d[..., 1], cx + d[..., 2], cy + d[..., 3]], axis=-1)


def make_coder(
    regression: str,
    box_weights=(10.0, 10.0, 5.0, 5.0),
    anchor_scale: float = 8.0,
    inclusive: bool = False,
):
    """The coder named by ``HeadConfig.regression`` ("box" or "point").

    ``inclusive`` changes POINT's distances (the BOX coding is identical in
    both geometries, ATSS_SPEC §0); both coders carry it as ``.inclusive`` for
    the losses and post-processing that decode with them.
    """
    if regression == "box":
        return BoxCoder(box_weights, inclusive)
    if regression == "point":
        return PointCoder(anchor_scale, inclusive)
    raise ValueError(f"unknown regression type {regression!r}: expected 'box' or 'point'")


def coder_for_model(model_config):
    """The coder a :class:`~atss_tf.config.ModelConfig` asks for: targets,
    losses and post-processing all call this, so they encode and decode alike."""
    return make_coder(
        model_config.head.regression,
        model_config.box_weights,
        anchor_scale=model_config.anchors.octave_base_scale,
        inclusive=bool(model_config.inclusive_geometry),
    )
