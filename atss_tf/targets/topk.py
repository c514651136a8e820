"""The authors' TOPK variant (``POSITIVE_TYPE: TOPK``, ATSS_SPEC §3).

For each GT the ``assigner.topk`` anchors of highest ``IoU - d / d_max / 1000``
over all levels, where ``d`` is the anchor-center to GT-center distance and
``d_max`` the largest such distance over all anchors and valid GTs of the
image; those whose center lies inside the GT (``center_margin``) are
positive. An anchor positive for several GTs takes the highest IoU (ties:
lowest GT index). Ties in the top-k go to the lowest anchor index. Never
ignores anchors.
"""

from __future__ import annotations

import tensorflow as tf

from atss_tf import boxes as box_ops
from atss_tf.anchors import AnchorGrid
from atss_tf.config import AssignerConfig
from atss_tf.targets.common import batched_inputs, match_candidates, points_inside, unbatch


def select(
    grid: AnchorGrid,
    gt_boxes: tf.Tensor,
    gt_mask: tf.Tensor,
    assigner: AssignerConfig,
    inclusive: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """TOPK positives; selector interface of :mod:`atss_tf.targets.common`."""
    k = min(assigner.topk, grid.num_anchors)
    boxes, mask, single = batched_inputs(gt_boxes, gt_mask)
    anchors = tf.constant(grid.boxes)
    points = tf.constant(grid.centers)
    overlaps = box_ops.iou(boxes[:, :, None, :], anchors[None, None])  # [B, M, A]
    diff = points[None, None] - box_ops.centers(boxes)[:, :, None, :]
    dist = tf.sqrt(tf.reduce_sum(tf.square(diff), axis=-1))  # [B, M, A]
    dist_max = tf.reduce_max(tf.where(mask[..., None], dist, 0.0), axis=[1, 2], keepdims=True)
    score = overlaps - tf.math.divide_no_nan(dist, dist_max) / 1000.0
    _, top = tf.math.top_k(score, k)  # [B, M, k]
    gt = boxes[:, :, None, :]
    positive = points_inside(tf.gather(points, top), gt, assigner.inside_margin)
    positive &= mask[..., None]
    matched = match_candidates(
        top, tf.gather(overlaps, top, batch_dims=2), positive, grid.num_anchors
    )
    return unbatch((matched, tf.zeros_like(matched, dtype=tf.bool)), single)
