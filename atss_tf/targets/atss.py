"""ATSS sample selection (ATSS_SPEC §3, paper Algorithm 1), computed on windows.

The readable definition is :mod:`atss_tf.targets.dense_atss`: for every GT and
pyramid level, the distance from the GT center to every anchor, the
``k * #A`` nearest as candidates, IoUs for all A x M pairs - as the official
code does. This module is an optimisation of it, proven equal on random
cases by ``tests/test_targets_reference.py``: only the anchors that *can* be
among the nearest are looked at, and IoUs are computed for candidates only.

Why a small fixed set of locations is enough. Anchor locations of a level form
a product grid (columns x rows); the ``#A`` anchors of a location share its
center, so the ``k * #A`` nearest anchors are the anchors of the ``k`` nearest
locations (ties: lowest anchor index, like ``tf.math.top_k`` on the flattened
level). Sort the columns by their distance to the GT center and call ``px`` a
column's position in that order; likewise ``py`` for rows. On a regular grid
the columns two positions apart differ by a full stride, so a location at
``(px, py)`` has every location in columns ``< px - 1`` and rows ``<= py``
strictly closer than itself, and every location in columns ``<= px`` and rows
``< py - 1`` too. It can therefore only be among the ``k`` nearest if
``max(px - 1, 0) * (py + 1) < k`` and ``(px + 1) * max(py - 1, 0) < k``. Those
``(px, py)`` form a static "cross" of 32 cells for ``k = 9`` (whatever the GT
position, inside or outside the canvas, next to a border or not)::

         px: 0 1 2 3 4 5 6 7 8 9        # = a cell that can be among the 9
    py 0:    # # # # # # # # # #        nearest; (0, 0) is the nearest
    py 1:    # # # # # # . . . .        column and row, (3, 1) the 4th
    py 2:    # # # # . . . . . .        nearest column and 2nd nearest row
    py 3:    # # # # . . . . . .
    py 4:    # # . . . . . . . .
    py 5:    # # . . . . . . . .
    py 6:    # . . . . . . . . .
    py 7:    # . . . . . . . . .
    py 8:    # . . . . . . . . .
    py 9:    # . . . . . . . . .

The columns and rows in distance order follow in closed form from the GT
center (:func:`axis_order`). Worked example: 5 columns, a GT center at
``u = 2.3`` columns (``(x - offset) / stride``). The nearest column is 2; the
point lies on its high side, so column 3 (0.7 away) comes before column 1
(1.3), then 4, then 0: the order is ``2, 3, 1, 4, 0``. Near a border the
order runs out on one side - ``u = 3.8`` gives ``4, 3, 2, 1, 0`` - and a center
outside the canvas (``u = -1.7``) gives ``0, 1, 2, 3, 4``. Among the cross the ``k`` nearest are picked by an
exact rank (distance, then anchor index), which reproduces a dense top-k
including its tie rule. ``tests/test_targets_reference.py`` checks this
against a dense NumPy implementation.

Compared with the official code: distances are float32 ``sqrt`` of squared
center differences as there; the IoU threshold is ``mean + std`` with the
unbiased (K - 1) std, computed relative to the best candidate IoU so that
equal candidate IoUs give a threshold equal to them; zero valid GTs give no
positives instead of an error.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from atss_tf import boxes as box_ops
from atss_tf.anchors import AnchorGrid
from atss_tf.config import AssignerConfig
from atss_tf.targets.common import batched_inputs, match_candidates, points_inside, unbatch


def candidate_pattern(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distance-order positions ``(px, py)`` (int32 ``[P]`` each) of the grid
    locations that can be among the ``k`` nearest to a point (see module doc).

    ``k = 9`` gives 32 cells, ``k = 3`` 10, ``k = 15`` 56.
    """
    cells = [
        (px, py)
        for py in range(k + 1)
        for px in range(k + 1)
        if max(px - 1, 0) * (py + 1) < k and (px + 1) * max(py - 1, 0) < k
    ]
    px, py = np.asarray(cells, np.int32).T
    return px, py


def axis_order(u: tf.Tensor, n: np.ndarray, positions: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
    """Grid cells along one axis by their distance order to a point.

    Args:
        u: ``[..., L]`` float32 position of the point in cell units
            (``(x - offset) / stride``), one per level.
        n: ``[L]`` number of cells of each level along this axis.
        positions: ``[P]`` int distance positions wanted (0 = nearest cell).

    Returns:
        ``(index [..., L, P] int32, valid [..., L, P] bool)``: the cell at each
        wanted position; positions beyond the level's cells are invalid
        (index 0). Exact ties may come in either order.
    """
    n = tf.constant(n, tf.int32)
    nf = tf.cast(n, tf.float32)
    nearest = tf.clip_by_value(tf.round(tf.clip_by_value(u, -1.0, nf)), 0.0, nf - 1.0)
    high_first = u >= nearest
    nearest_i = tf.cast(nearest, tf.int32)
    # Cells available above and below the nearest one; "first" is the side the
    # point lies on, whose cells come first in the interleaved order.
    above = n - 1 - nearest_i
    below = nearest_i
    first = tf.where(high_first, above, below)[..., None]
    second = tf.where(high_first, below, above)[..., None]
    both = tf.minimum(first, second)
    t = tf.constant(positions, tf.int32)
    interleaved = t <= 2 * both
    odd = t % 2 == 1
    first_longer = first > second
    step_first = tf.where(
        interleaved, tf.where(odd, (t + 1) // 2, 0), tf.where(first_longer, t - both, 0)
    )
    step_second = tf.where(
        interleaved, tf.where(odd, 0, t // 2), tf.where(first_longer, 0, t - both)
    )
    direction = tf.where(high_first, 1, -1)[..., None]
    index = nearest_i[..., None] + direction * (step_first - step_second)
    valid = t <= first + second
    return tf.where(valid, index, 0), valid


# The window tables pass cell codes through a float32 matmul (see _candidates),
# exact only for integers below 2**24; a code is 4 * location + 2 flags.
FLOAT32_EXACT_INTEGERS = 2**24
MAX_LEVEL_LOCATIONS = FLOAT32_EXACT_INTEGERS // 4


def column_code(col: tf.Tensor, col_ok: tf.Tensor) -> tf.Tensor:
    """The column's share of a cell code: ``4 * col + col_ok``."""
    return col * 4 + tf.cast(col_ok, tf.int32)


def row_code(row: tf.Tensor, row_ok: tf.Tensor, widths: np.ndarray) -> tf.Tensor:
    """The row's share of a cell code: ``4 * row * width + row_ok``; with
    :func:`column_code` the sum is ``4 * location + col_ok + row_ok``."""
    return row * (4 * widths[:, None]) + tf.cast(row_ok, tf.int32)


def unpack_code(code: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(location, valid)`` of summed cell codes: valid when both the column
    and the row exist (both flags set)."""
    return code // 4, code % 4 == 2


def _candidates(
    grid: AnchorGrid, boxes: tf.Tensor, k: int
) -> tuple[tf.Tensor, np.ndarray, tf.Tensor]:
    """Candidate anchors of batched, cleaned ``boxes [B, M, 4]``.

    Returns ``anchor [B, M, C]`` int32 (per level ``k`` nearest-location slots
    times #A anchors, C = levels x k x #A), ``slot_ok [C]`` NumPy bool (False
    for the slots of levels with fewer than ``k`` locations) and
    ``points [B, M, C, 2]`` float32 anchor centers.
    """
    batch, num_gt = tf.shape(boxes)[0], tf.shape(boxes)[1]
    apl = grid.anchors_per_location
    heights = np.asarray([h for h, _ in grid.level_shapes], np.int32)
    widths = np.asarray([w for _, w in grid.level_shapes], np.int32)
    offsets = np.asarray(grid.offsets, np.float32)
    strides = np.asarray(grid.strides, np.float32)
    k_locations = np.minimum(k, heights * widths)
    px, py = candidate_pattern(k)
    num_cells, num_positions = len(px), k + 1
    if int((heights * widths).max()) >= MAX_LEVEL_LOCATIONS:
        raise ValueError(f"canvas {grid.image_size} too large for the ATSS window codes")

    # Location centers, exactly the anchor centers of the grid (j*s + offset).
    def centers(col, row):
        return (
            offsets[:, None] + tf.cast(col, tf.float32) * strides[:, None],
            offsets[:, None] + tf.cast(row, tf.float32) * strides[:, None],
        )

    center = box_ops.centers(boxes)  # [B, M, 2]
    gx, gy = center[..., 0:1], center[..., 1:2]  # [B, M, 1]
    positions = np.arange(num_positions)
    cols, col_ok = axis_order((gx - offsets) / strides, widths, positions)  # [B, M, L, T]
    rows, row_ok = axis_order((gy - offsets) / strides, heights, positions)
    ax, ay = centers(cols, rows)
    # Per cell: dx, dy and code = 4 * location + (column ok) + (row ok).
    table = tf.concat(
        [
            ax - gx[..., None],
            ay - gy[..., None],
            tf.cast(column_code(cols, col_ok), tf.float32),
            tf.cast(row_code(rows, row_ok, widths), tf.float32),
        ],
        axis=-1,
    )  # [B, M, L, 4T]
    # Spread the 1-D tables over the cells with a constant 0/1 matrix: exact
    # (one non-zero term per sum, codes < 2**24), and unlike a gather XLA keeps
    # the result in memory rather than recomputing it in the pairwise ranking.
    spread = np.zeros((4 * num_positions, 3 * num_cells), np.float32)
    cells = np.arange(num_cells)
    spread[px, cells] = 1.0
    spread[num_positions + py, num_cells + cells] = 1.0
    spread[2 * num_positions + px, 2 * num_cells + cells] = 1.0
    spread[3 * num_positions + py, 2 * num_cells + cells] = 1.0
    dx, dy, code = tf.split(tf.tensordot(table, spread, axes=1), 3, axis=-1)  # [B, M, L, P]
    code = tf.cast(code, tf.int32)
    _, valid = unpack_code(code)
    dist = tf.where(valid, tf.sqrt(dx * dx + dy * dy), np.inf)

    # Rank the cells by (distance, location index): a strict total order over
    # the valid cells, so ranks 0..k-1 name the k nearest exactly once.
    d_i, d_j = dist[..., :, None], dist[..., None, :]
    closer = (d_j < d_i) | ((d_j == d_i) & (code[..., None, :] < code[..., :, None]))
    rank = tf.reduce_sum(tf.cast(closer, tf.int32), axis=-1)  # [B, M, L, P]
    # Slot r of a level holds the cell of rank r.
    in_slot = tf.equal(rank[..., None, :], tf.range(k)[:, None])  # [B, M, L, k, P]
    slot_location, _ = unpack_code(tf.reduce_sum(tf.where(in_slot, code[..., None, :], 0), axis=-1))
    slot_ok = np.arange(k)[None, :] < k_locations[:, None]  # [L, k]
    ax, ay = centers(slot_location % widths[:, None], slot_location // widths[:, None])

    starts = np.asarray(grid.level_starts, np.int32)
    anchor = starts[:, None, None] + (slot_location * apl)[..., None] + tf.range(apl)
    per_anchor = tf.shape(anchor)  # [B, M, L, k, #A]
    points = tf.broadcast_to(
        tf.stack([ax, ay], axis=-1)[..., None, :], tf.concat([per_anchor, [2]], 0)
    )
    return (
        tf.reshape(anchor, [batch, num_gt, -1]),
        np.repeat(slot_ok.reshape(-1), apl),
        tf.reshape(points, [batch, num_gt, -1, 2]),
    )


def candidates(
    grid: AnchorGrid, gt_boxes: tf.Tensor, gt_mask: tf.Tensor, k: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """The ATSS candidates (step 2 of Algorithm 1) of every GT.

    Args:
        grid: anchors of the canvas.
        gt_boxes: ``[M, 4]`` or ``[B, M, 4]`` float32 continuous xyxy.
        gt_mask: ``[M]`` or ``[B, M]`` bool.
        k: candidates per level and anchor per location.

    Returns:
        ``(anchor_index [..., M, C] int32, is_candidate [..., M, C] bool)``
        with C = levels x k x #A: per level the ``min(k * #A, anchors in
        level)`` anchors nearest to the GT center (ties: lowest anchor index),
        nearest first; slots of levels with fewer anchors and padded GTs are
        not candidates.
    """
    boxes, mask, single = batched_inputs(gt_boxes, gt_mask)
    anchor, slot_ok, _ = _candidates(grid, boxes, k)
    return unbatch((anchor, tf.constant(slot_ok) & mask[..., None]), single)


def _threshold_terms(
    overlaps: tf.Tensor, selected: tf.Tensor, num_candidates: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(best, mean, std, mean + std)`` ``[B, M, 1]`` of each GT's K candidate
    IoUs (``overlaps`` ``[B, M, C]`` where ``selected``), std unbiased (K - 1).

    Measured from the best IoU so that equal candidate IoUs give a threshold
    exactly equal to them."""
    best = tf.reduce_max(tf.where(selected, overlaps, 0.0), axis=-1, keepdims=True)
    dev = tf.where(selected, overlaps - best, 0.0)
    mean_dev = tf.reduce_sum(dev, axis=-1, keepdims=True) / num_candidates
    sq = tf.where(selected, tf.square(dev - mean_dev), 0.0)
    std = tf.sqrt(tf.reduce_sum(sq, axis=-1, keepdims=True) / max(num_candidates - 1, 1))
    return best, best + mean_dev, std, best + mean_dev + std


def candidate_statistics(
    grid: AnchorGrid, gt_boxes: tf.Tensor, gt_mask: tf.Tensor, k: int
) -> dict[str, tf.Tensor]:
    """What ATSS's IoU threshold is made of, per GT (paper Section 3.3).

    Args:
        grid: the canvas's anchors. gt_boxes: ``[B, M, 4]`` float32 continuous
            xyxy canvas pixels. gt_mask: ``[B, M]`` bool. k: candidates per
            level and anchor per location (``assigner.topk``).

    Returns:
        ``"mean"``, ``"std"`` (unbiased) and ``"threshold"`` (``mean + std``) of
        the candidates' IoUs, each ``[B, M]`` float32 (0 on padded rows), exactly
        the threshold :func:`select` applies.
    """
    boxes, mask, _ = batched_inputs(gt_boxes, gt_mask)
    anchor, slot_ok, _ = _candidates(grid, boxes, k)
    overlaps = box_ops.iou(boxes[:, :, None, :], tf.gather(tf.constant(grid.boxes), anchor))
    selected = tf.constant(slot_ok) & mask[..., None]
    _, mean, std, threshold = _threshold_terms(overlaps, selected, int(slot_ok.sum()))
    valid = tf.cast(mask, tf.float32)
    return {
        "mean": mean[..., 0] * valid,
        "std": std[..., 0] * valid,
        "threshold": threshold[..., 0] * valid,
    }


def select(
    grid: AnchorGrid,
    gt_boxes: tf.Tensor,
    gt_mask: tf.Tensor,
    assigner: AssignerConfig,
    inclusive: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """ATSS positives; the selector interface of :mod:`atss_tf.targets.common`.

    ``assigner``: ``topk`` (k per level and anchor per location),
    ``center_in_box`` / ``center_margin``, ``fallback_best_candidate`` (a valid GT left without
    positive gets its highest-IoU candidate, if that IoU is > 0; ties: lowest
    anchor index; it still competes with other GTs for that anchor). Never
    ignores anchors.
    """
    k = assigner.topk
    boxes, mask, single = batched_inputs(gt_boxes, gt_mask)
    anchor, slot_ok, points = _candidates(grid, boxes, k)
    gt = boxes[:, :, None, :]
    overlaps = box_ops.iou(gt, tf.gather(tf.constant(grid.boxes), anchor))  # [B, M, C]
    selected = tf.constant(slot_ok) & mask[..., None]
    best, _, _, threshold = _threshold_terms(overlaps, selected, int(slot_ok.sum()))

    inside = points_inside(points, gt, assigner.inside_margin)
    positive = selected & (overlaps >= threshold) & inside

    if assigner.fallback_best_candidate:
        has_positive = tf.reduce_any(positive, axis=-1, keepdims=True)
        eligible = selected & (overlaps == best) & (best > 0.0)
        first = tf.reduce_min(tf.where(eligible, anchor, grid.num_anchors), axis=-1, keepdims=True)
        positive |= eligible & (anchor == first) & ~has_positive

    matched = match_candidates(anchor, overlaps, positive, grid.num_anchors)
    ignore = tf.zeros_like(matched, dtype=tf.bool)
    return unbatch((matched, ignore), single)
