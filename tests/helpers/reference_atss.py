"""Slow, dense NumPy references of the sample selectors, written from ATSS_SPEC §3.

Deliberately independent of ``atss_tf.targets`` (and of ``atss_tf.boxes``):
every anchor against every GT, float64 arithmetic, stable sorts (distance ties
go to the lowest anchor index, as ``tf.math.top_k`` on a flattened level
would). Inputs are continuous xyxy boxes (ATSS_SPEC §0); outputs are
``matched [A]`` int64 (-1: not positive).
"""

from __future__ import annotations

import numpy as np


def pairwise_iou(anchors: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``[A, 4]`` x ``[M, 4]`` -> ``[A, M]`` float64 IoU; 0 where the union is 0."""
    a = anchors.astype(np.float64)[:, None, :]
    g = gt.astype(np.float64)[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], g[..., 2]) - np.maximum(a[..., 0], g[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], g[..., 3]) - np.maximum(a[..., 1], g[..., 1]), 0, None)
    inter = iw * ih

    def area(b):
        return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)

    union = area(a) + area(g) - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def ltrb(points: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``[A, 2]`` points x ``[M, 4]`` boxes -> ``[A, M, 4]`` distances to the sides."""
    p = points.astype(np.float64)[:, None, :]
    g = gt.astype(np.float64)[None, :, :]
    return np.stack(
        [
            p[..., 0] - g[..., 0],
            p[..., 1] - g[..., 1],
            g[..., 2] - p[..., 0],
            g[..., 3] - p[..., 1],
        ],
        axis=-1,
    )


def grid_centers(level_shapes, strides, offsets, anchors_per_location: int) -> np.ndarray:
    """Anchor centers from the spec: cell j of a level of stride s sits at ``j*s + offset``."""
    out = []
    for (h, w), s, off in zip(level_shapes, strides, offsets):
        ys, xs = np.meshgrid(np.arange(h) * s + off, np.arange(w) * s + off, indexing="ij")
        c = np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float64)
        out.append(np.repeat(c, anchors_per_location, axis=0))
    return np.concatenate(out)


def reference_atss(
    anchors: np.ndarray,
    centers: np.ndarray,
    num_per_level,
    anchors_per_location: int,
    gt: np.ndarray,
    k: int = 9,
    margin: float = 0.01,
    fallback: bool = False,
    return_ambiguous: bool = False,
):
    """ATSS (paper Algorithm 1), dense.

    Args:
        anchors: ``[A, 4]`` anchor boxes. centers: ``[A, 2]`` anchor centers.
        num_per_level: anchors per level (level-major order).
        gt: ``[M, 4]`` valid ground truths only.
        k, margin, fallback: ``assigner.topk``, ``center_margin``,
            ``fallback_best_candidate``.
        return_ambiguous: also return ``[A]`` bool, the anchors whose result
            hangs on a float32-sized difference (two GTs of nearly equal IoU,
            an IoU next to its threshold, a center next to the margin, or a
            GT whose k-th and next nearest anchors are nearly equally far):
            float32 code may legitimately decide those either way.

    Returns:
        ``matched [A]`` int64, or ``(matched, ambiguous)``.
    """
    num_anchors, num_gt = len(anchors), len(gt)
    matched = np.full(num_anchors, -1, np.int64)
    ambiguous = np.zeros(num_anchors, bool)
    if num_gt == 0:
        return (matched, ambiguous) if return_ambiguous else matched
    gt = gt.astype(np.float64)
    ious = pairwise_iou(anchors, gt)
    gt_center = (gt[:, :2] + gt[:, 2:]) / 2.0
    dist = np.sqrt(((centers[:, None, :] - gt_center[None]) ** 2).sum(-1))  # [A, M]

    best_iou = np.full((num_anchors, num_gt), -np.inf)
    start = 0
    candidates = []
    for n in num_per_level:
        kk = min(k * anchors_per_location, n)
        level_dist = dist[start : start + n]
        order = np.argsort(level_dist, axis=0, kind="stable")  # [n, M]
        candidates.append(order[:kk] + start)
        if kk < n:
            last = np.take_along_axis(level_dist, order[kk - 1 : kk + 1], axis=0)
            gap = last[1] - last[0]
            near_tie = (gap > 0) & (gap < 1e-4 * np.maximum(last[1], 1.0))
            for g in np.nonzero(near_tie)[0]:
                ambiguous[order[: kk + 1, g] + start] = True
        start += n
    cand = np.concatenate(candidates)  # [K, M]
    cols = np.broadcast_to(np.arange(num_gt), cand.shape)
    cand_iou = ious[cand, cols]
    threshold = cand_iou.mean(axis=0) + cand_iou.std(axis=0, ddof=1 if len(cand) > 1 else 0)
    inside = ltrb(centers, gt)[cand, cols].min(axis=-1) > margin
    positive = (cand_iou >= threshold) & inside
    close = (np.abs(cand_iou - threshold) < 1e-6) | (
        np.abs(ltrb(centers, gt)[cand, cols].min(axis=-1) - margin) < 1e-4
    )
    ambiguous[cand[close]] = True
    if fallback:
        for g in np.nonzero(~positive.any(axis=0))[0]:
            top = cand_iou[:, g].max()
            if top > 0:
                row = np.argmin(np.where(cand_iou[:, g] == top, cand[:, g], num_anchors))
                positive[row, g] = True
    best_iou[cand[positive], cols[positive]] = cand_iou[positive]
    has = np.isfinite(best_iou).any(axis=1)
    matched[has] = np.argmax(best_iou[has], axis=1)  # first maximum: lowest GT index
    with np.errstate(invalid="ignore"):  # inf - inf where an anchor has no positive
        gap = best_iou.max(axis=1, keepdims=True) - best_iou
        ambiguous |= ((gap > 0) & (gap < 1e-6)).any(axis=1)
    return (matched, ambiguous) if return_ambiguous else matched


def reference_fcos(
    centers: np.ndarray,
    anchor_strides: np.ndarray,
    anchor_ranges: np.ndarray,
    gt: np.ndarray,
    margin: float = 0.01,
    range_offset: float = 0.0,
    center_radius: float | None = None,
    return_ambiguous: bool = False,
):
    """FCOS spatial + scale constraint, optionally with center sampling.

    Args:
        centers: ``[A, 2]`` anchor points. anchor_strides: ``[A]`` their stride.
        anchor_ranges: ``[A, 2]`` the (low, high) range of ``max(l, t, r, b)``.
        gt: ``[M, 4]`` valid ground truths only.
        range_offset: subtracted from the distances for the range test.
        center_radius: None, or the center-sampling radius in strides.
        return_ambiguous: also return the ``[A]`` anchors decided by a
            float32-sized difference (see :func:`reference_atss`).
    """
    num_anchors, num_gt = len(centers), len(gt)
    matched = np.full(num_anchors, -1, np.int64)
    if num_gt == 0:
        return (matched, np.zeros(num_anchors, bool)) if return_ambiguous else matched
    gt = gt.astype(np.float64)
    d = ltrb(centers, gt)  # [A, M, 4]
    if center_radius is not None:
        r = (anchor_strides * center_radius)[:, None]
        cx = ((gt[:, 0] + gt[:, 2]) / 2)[None]
        cy = ((gt[:, 1] + gt[:, 3]) / 2)[None]
        px = centers[:, 0:1].astype(np.float64)
        py = centers[:, 1:2].astype(np.float64)
        left = px - np.maximum(cx - r, gt[None, :, 0])
        top = py - np.maximum(cy - r, gt[None, :, 1])
        right = np.minimum(cx + r, gt[None, :, 2]) - px
        bottom = np.minimum(cy + r, gt[None, :, 3]) - py
        inside_by = np.minimum(np.minimum(left, top), np.minimum(right, bottom))
    if center_radius is None:
        inside_by = d.min(-1)
    inside = inside_by > margin
    extent = (d - range_offset).max(-1)
    ok = inside & (extent >= anchor_ranges[:, 0:1]) & (extent <= anchor_ranges[:, 1:2])
    area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    cost = np.where(ok, area[None], np.inf)
    has = ok.any(axis=1)
    matched[has] = np.argmin(cost[has], axis=1)
    if not return_ambiguous:
        return matched
    near = (
        (np.abs(inside_by - margin) < 1e-4)
        | (np.abs(extent - anchor_ranges[:, 0:1]) < 1e-4)
        | (np.abs(extent - anchor_ranges[:, 1:2]) < 1e-4)
    )
    ambiguous = (near & (inside_by > margin - 1e-4)).any(axis=1)
    with np.errstate(invalid="ignore"):
        gap = cost - cost.min(axis=1, keepdims=True)
        ambiguous |= ((gap > 0) & (gap < 1e-6 * cost)).any(axis=1)
    return matched, ambiguous
