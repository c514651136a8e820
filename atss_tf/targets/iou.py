"""RetinaNet IoU matching, the paper's anchor-based baseline (ATSS_SPEC §3).

maskrcnn-benchmark ``Matcher`` semantics, as used by the authors' code:

* each anchor takes the GT of highest IoU (ties: lowest GT index);
  IoU >= ``positive_iou`` positive, < ``negative_iou`` background, in between
  ignored;
* low-quality matches: for every GT, each anchor whose IoU equals that GT's
  highest IoU (all ties) is restored to its *own* best GT, whatever its IoU;
* positives whose anchor center is not inside their GT (``center_margin``)
  become ignored (``center_in_box``, paper Table 1 "In GT Box"; off: they
  stay positive).

One deliberate difference: a valid GT that overlaps no anchor at all (IoU 0
everywhere, e.g. zero area) restores nothing; the official code would turn
every anchor without overlap into a positive of GT 0 there.
"""

from __future__ import annotations

import tensorflow as tf

from atss_tf import boxes as box_ops
from atss_tf.anchors import AnchorGrid
from atss_tf.config import AssignerConfig
from atss_tf.targets.common import batched_inputs, lowest_index_of_best, points_inside, unbatch


def select(
    grid: AnchorGrid,
    gt_boxes: tf.Tensor,
    gt_mask: tf.Tensor,
    assigner: AssignerConfig,
    inclusive: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """IoU (RetinaNet) positives and ignored anchors; dense A x M IoUs.

    ``assigner``: ``positive_iou``, ``negative_iou``,
    ``low_quality_matches``, ``center_in_box``, ``center_margin``. Selector interface of
    :mod:`atss_tf.targets.common`.
    """
    a = assigner
    boxes, mask, single = batched_inputs(gt_boxes, gt_mask)
    anchors = tf.constant(grid.boxes)
    overlaps = box_ops.iou(anchors[None, :, None, :], boxes[:, None, :, :])  # [B, A, M]
    overlaps = tf.where(mask[:, None, :], overlaps, -1.0)
    best = tf.reduce_max(overlaps, axis=-1)  # [B, A]
    best_gt = lowest_index_of_best(overlaps, best)
    positive = best >= a.positive_iou
    between = (best >= a.negative_iou) & ~positive
    if a.low_quality_matches:
        gt_best = tf.reduce_max(overlaps, axis=1, keepdims=True)  # [B, 1, M]
        restore = tf.reduce_any((overlaps == gt_best) & (gt_best > 0.0), axis=-1)
        positive |= restore
        between &= ~restore
    matched_boxes = tf.gather(boxes, best_gt, batch_dims=1)  # [B, A, 4]
    inside = points_inside(tf.constant(grid.centers)[None], matched_boxes, a.inside_margin)
    ignore = between | (positive & ~inside)
    matched = tf.where(positive & inside, best_gt, -1)
    return unbatch((matched, ignore), single)
