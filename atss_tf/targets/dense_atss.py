"""ATSS as the paper writes it (Algorithm 1), dense and step by step.

This is the readable definition; :mod:`atss_tf.targets.atss` computes the same
positives on small windows around each ground truth, which is what the
:class:`~atss_tf.targets.TargetEncoder` runs (``tests/test_targets_reference.py``
proves the two equal on random cases). Same selector interface as every
selector (:mod:`atss_tf.targets.common`); ``assigner.type: atss_dense`` picks
it, e.g. to check a result or to time the windowed version against it
(``benchmarks/encoder.py``).

Algorithm 1, for a ground-truth box ``g``:

1. ``C_g = {}``; for every pyramid level ``i``: the ``k`` anchors (times the
   ``#A`` anchors of a location) whose centers are nearest to the center of
   ``g`` by L2 distance join ``C_g``.
2. ``D_g``: the IoU of ``g`` with every candidate in ``C_g``.
3. ``m_g``, ``v_g``: the mean and the standard deviation of ``D_g``;
   the threshold is ``t_g = m_g + v_g``.
4. A candidate is positive if its IoU is at least ``t_g`` and its center lies
   inside ``g`` (distance to every side above ``assigner.center_margin``).
5. An anchor positive for several boxes goes to the one of highest IoU
   (ties: the lowest box index). All other anchors are negative.

Memory is ``O(M x A)`` per image (the full IoU and distance matrices), like
the authors' code.
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
    """Dense ATSS positives (``assigner.topk``, ``assigner.center_in_box`` / ``center_margin``);
    never ignores anchors. ``fallback_best_candidate`` is not applied here."""
    boxes, mask, single = batched_inputs(gt_boxes, gt_mask)  # [B, M, 4], [B, M]
    anchors = tf.constant(grid.boxes)  # [A, 4]
    points = tf.constant(grid.centers)  # [A, 2]

    # Step 1: per level, the k * #A anchors nearest to the box center.
    offsets = points[None, None] - box_ops.centers(boxes)[:, :, None, :]
    distance = tf.sqrt(tf.reduce_sum(offsets * offsets, axis=-1))  # [B, M, A]
    per_level = []
    for start, count in zip(grid.level_starts, grid.num_per_level):
        nearest = min(assigner.topk * grid.anchors_per_location, count)
        # top_k of -distance: ties go to the lowest anchor index.
        _, index = tf.math.top_k(-distance[..., start : start + count], nearest)
        per_level.append(index + start)
    candidates = tf.concat(per_level, axis=-1)  # [B, M, K]

    # Step 2: IoU of the box with each candidate.
    iou = box_ops.iou(boxes[:, :, None, :], tf.gather(anchors, candidates))  # [B, M, K]

    # Step 3: threshold = mean + standard deviation (unbiased, as torch.std).
    num_candidates = candidates.shape[-1]
    mean = tf.reduce_mean(iou, axis=-1, keepdims=True)
    variance = tf.reduce_sum(tf.square(iou - mean), axis=-1, keepdims=True) / max(
        num_candidates - 1, 1
    )
    threshold = mean + tf.sqrt(variance)

    # Step 4: positive if IoU >= threshold and the center is inside the box.
    inside = points_inside(
        tf.gather(points, candidates), boxes[:, :, None, :], assigner.inside_margin
    )
    positive = (iou >= threshold) & inside & mask[..., None]

    # Step 5: each anchor keeps the box of highest IoU among those it is positive for.
    matched = match_candidates(candidates, iou, positive, grid.num_anchors)
    return unbatch((matched, tf.zeros_like(matched, dtype=tf.bool)), single)
