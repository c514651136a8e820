"""Pieces shared by the sample selectors.

Every selector has the signature

``select(grid, gt_boxes, gt_mask, assigner, inclusive=False) -> (matched_gt, ignore)``

* ``grid``: the :class:`~atss_tf.anchors.AnchorGrid` of the canvas (NumPy
  constants, embedded in the traced graph).
* ``gt_boxes``: ``[M, 4]`` or ``[B, M, 4]`` float32 ground truth, continuous
  ``[x1, y1, x2, y2]`` canvas pixels (ATSS_SPEC §0).
* ``gt_mask``: ``[M]`` or ``[B, M]`` bool, True for valid rows. Padded rows may
  hold any values; they never match and never produce NaNs.
* ``assigner``: the :class:`~atss_tf.config.AssignerConfig` section.
* ``inclusive``: the model's box geometry (``model.inclusive_geometry``);
  only the FCOS scale ranges measure distances with it.

Returns ``matched_gt`` ``[A]`` / ``[B, A]`` int32 (index of the matched GT row,
-1 for background and ignored anchors) and ``ignore`` ``[A]`` / ``[B, A]`` bool
(anchors excluded from the classification loss).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from atss_tf import boxes as box_ops
from atss_tf.anchors import AnchorGrid
from atss_tf.config import AssignerConfig

Selector = Callable[
    [AnchorGrid, tf.Tensor, tf.Tensor, AssignerConfig, bool], tuple[tf.Tensor, tf.Tensor]
]

_LOW32 = 0xFFFFFFFF


def batched_inputs(gt_boxes: tf.Tensor, gt_mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, bool]:
    """Bring ``[M, 4]``/``[M]`` or ``[B, M, 4]``/``[B, M]`` inputs to the batched form.

    Padded rows are replaced by zeros so that no value in them (NaN, inf) can
    reach an arithmetic result. Returns ``(boxes [B, M, 4] float32,
    mask [B, M] bool, was_single)``.
    """
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_mask = tf.cast(gt_mask, tf.bool)
    single = gt_boxes.shape.rank == 2
    if single:
        gt_boxes = gt_boxes[None]
        gt_mask = gt_mask[None]
    gt_boxes = tf.where(gt_mask[..., None], gt_boxes, tf.zeros_like(gt_boxes))
    return gt_boxes, gt_mask, single


def unbatch(tensors: tuple[tf.Tensor, ...], single: bool) -> tuple[tf.Tensor, ...]:
    """Drop the batch dimension added by :func:`batched_inputs` for single images."""
    if single:
        return tuple(t[0] for t in tensors)
    return tensors


def points_inside(points: tf.Tensor, boxes: tf.Tensor, margin: float) -> tf.Tensor:
    """``min(l, t, r, b) > margin`` for broadcastable ``[..., 2]`` points and ``[..., 4]`` boxes."""
    return tf.reduce_min(box_ops.ltrb_distances(points, boxes), axis=-1) > margin


def lowest_index_of_best(values: tf.Tensor, best: tf.Tensor) -> tf.Tensor:
    """Index (int32) along the last axis of the first element equal to ``best``.

    ``values``: ``[..., N]``; ``best``: ``[...]`` (e.g. their max). Unlike
    ``tf.argmax`` the tie rule is guaranteed: the lowest index wins.
    """
    n = tf.shape(values)[-1]
    iota = tf.range(n, dtype=tf.int32)
    hit = tf.equal(values, best[..., None])
    return tf.reduce_min(tf.where(hit, iota, n), axis=-1)


def best_gt_per_anchor(
    anchor_index: tf.Tensor,
    gt_index: tf.Tensor,
    score: tf.Tensor,
    positive: tf.Tensor,
    num_anchors: int,
) -> tf.Tensor:
    """Resolve (anchor, GT) positive pairs: each anchor keeps the GT with the
    highest score, ties going to the lowest GT index.

    Args:
        anchor_index: ``[B, N]`` int32 anchor of each pair (0..A-1).
        gt_index: ``[B, N]`` int32 GT row of each pair (0..M-1).
        score: ``[B, N]`` float32, non-negative (an IoU).
        positive: ``[B, N]`` bool; other pairs are ignored.
        num_anchors: A.

    Returns:
        ``[B, A]`` int32 matched GT row, -1 where no positive pair exists.
    """
    # One scatter-max on an int64 key: the IoU bits (monotone for floats >= 0)
    # above the complemented GT index, so equal IoUs prefer the lower index.
    bits = tf.cast(tf.bitcast(tf.maximum(score, 0.0), tf.int32), tf.int64)
    key = bits * (_LOW32 + 1) + (_LOW32 - tf.cast(gt_index, tf.int64))
    key = tf.where(positive, key, tf.constant(-1, tf.int64))
    batch = tf.shape(anchor_index)[0]
    offsets = tf.range(batch, dtype=tf.int32)[:, None] * num_anchors
    flat_index = tf.reshape(anchor_index + offsets, [-1, 1])
    best = tf.tensor_scatter_nd_max(
        tf.fill([batch * num_anchors], tf.constant(-1, tf.int64)),
        flat_index,
        tf.reshape(key, [-1]),
    )
    best = tf.reshape(best, [batch, num_anchors])
    matched = _LOW32 - tf.bitwise.bitwise_and(best, _LOW32)
    return tf.where(best >= 0, tf.cast(matched, tf.int32), -1)


def match_candidates(
    candidates: tf.Tensor, iou: tf.Tensor, positive: tf.Tensor, num_anchors: int
) -> tf.Tensor:
    """Each anchor's GT among per-GT candidate lists (:func:`best_gt_per_anchor`).

    Args:
        candidates: ``[B, M, C]`` int32 candidate anchors of each GT.
        iou: ``[B, M, C]`` float32 their IoU with the GT.
        positive: ``[B, M, C]`` bool.
        num_anchors: A.

    Returns:
        ``[B, A]`` int32 matched GT row, -1 where none.
    """
    batch, num_gt = tf.shape(candidates)[0], tf.shape(candidates)[1]
    gt_index = tf.broadcast_to(tf.range(num_gt)[None, :, None], tf.shape(candidates))
    return best_gt_per_anchor(
        tf.reshape(candidates, [batch, -1]),
        tf.reshape(gt_index, [batch, -1]),
        tf.reshape(iou, [batch, -1]),
        tf.reshape(positive, [batch, -1]),
        num_anchors,
    )


def level_table(grid: AnchorGrid, values) -> tf.Tensor:
    """``[A]`` float32 constant repeating one value per pyramid level."""
    return tf.constant(np.repeat(np.asarray(values, np.float32), grid.num_per_level))
