"""FCOS sample selection, the paper's anchor-free baselines (ATSS_SPEC §3).

* ``fcos`` (spatial and scale constraint, the authors' ``SSC``): an anchor
  point is a candidate for a GT when it lies inside the GT
  (``min(l, t, r, b) > center_margin``) and ``max(l, t, r, b)`` falls in its
  level's range ``assigner.fcos_ranges`` (both ends inclusive). With
  ``loss.inclusive_geometry`` the range test uses distances 0.5 px shorter,
  as the authors' inclusive-pixel code measures them (ATSS_SPEC §0.3).
* ``fcos_center`` (FCOS center sampling, Table 3): the point must moreover lie
  in the box of half-size ``center_radius * stride`` centered on the GT center,
  clipped to the GT (the inside test is made against that clipped box).

Several candidate GTs: the smallest area wins (ties: lowest GT index).
Never ignores anchors.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from atss_tf import boxes as box_ops
from atss_tf.anchors import AnchorGrid
from atss_tf.config import AssignerConfig
from atss_tf.targets.common import (
    batched_inputs,
    level_table,
    lowest_index_of_best,
    points_inside,
    unbatch,
)


def _select(
    grid: AnchorGrid,
    gt_boxes: tf.Tensor,
    gt_mask: tf.Tensor,
    a: AssignerConfig,
    inclusive: bool,
    center: bool,
) -> tuple[tf.Tensor, tf.Tensor]:
    boxes, mask, single = batched_inputs(gt_boxes, gt_mask)
    points = tf.constant(grid.centers)[None, :, None, :]  # [1, A, 1, 2]
    gt = boxes[:, None, :, :]  # [B, 1, M, 4]
    if center:
        radius = level_table(grid, np.asarray(grid.strides) * a.center_radius)[None, :, None]
        c = box_ops.centers(gt)
        region = tf.stack(
            [
                tf.maximum(c[..., 0] - radius, gt[..., 0]),
                tf.maximum(c[..., 1] - radius, gt[..., 1]),
                tf.minimum(c[..., 0] + radius, gt[..., 2]),
                tf.minimum(c[..., 1] + radius, gt[..., 3]),
            ],
            axis=-1,
        )  # [B, A, M, 4]
        inside = points_inside(points, region, a.center_margin)
    else:
        inside = points_inside(points, gt, a.center_margin)
    offset = 0.5 if inclusive else 0.0
    extent = tf.reduce_max(box_ops.ltrb_distances(points, gt, offset=offset), axis=-1)
    low = level_table(grid, [r[0] for r in a.fcos_ranges])[None, :, None]
    high = level_table(grid, [r[1] for r in a.fcos_ranges])[None, :, None]
    candidate = inside & (extent >= low) & (extent <= high) & mask[:, None, :]
    area = tf.where(candidate, box_ops.area(gt), math.inf)  # [B, A, M]
    smallest = tf.reduce_min(area, axis=-1)
    matched = tf.where(tf.reduce_any(candidate, axis=-1), lowest_index_of_best(area, smallest), -1)
    return unbatch((matched, tf.zeros_like(matched, dtype=tf.bool)), single)


def select(
    grid: AnchorGrid,
    gt_boxes: tf.Tensor,
    gt_mask: tf.Tensor,
    assigner: AssignerConfig,
    inclusive: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """FCOS spatial and scale constraint; selector interface of :mod:`atss_tf.targets.common`."""
    return _select(grid, gt_boxes, gt_mask, assigner, inclusive, center=False)


def select_center(
    grid: AnchorGrid,
    gt_boxes: tf.Tensor,
    gt_mask: tf.Tensor,
    assigner: AssignerConfig,
    inclusive: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """FCOS with center sampling (``assigner.center_radius``); same interface."""
    return _select(grid, gt_boxes, gt_mask, assigner, inclusive, center=True)
