"""Merging the detections of all test-time passes (official ``merge_result_from_multi_scales``).

One image's detections of every pass, scaled to the first pass's image, go in
as flat arrays with a validity mask; the merged detections come out sorted by
score. TensorFlow ops with static shapes (``N`` in, ``2N`` buffer out), so the
merge traces once per ``N`` and runs inside a ``tf.function``, under XLA or in
a SavedModel.

Merge types (``tta.merge``):

* ``soft-vote`` (official ``soft_bbox_vote``), per class: take the best
  remaining box, group the remaining boxes whose IoU with it is
  ``>= vote_iou`` (the best box included); a group of one is kept as it is; a
  larger group gives its score-weighted mean box with the group's best score,
  plus every member with its own box and the score ``s * (1 - IoU)`` where that
  is ``>= decayed_score_threshold``; repeat on the rest.
* ``vote`` (``bbox_vote``): the same groups, the voted box only.
* ``nms``: class-aware greedy NMS at ``nms_iou``
  (:func:`atss_tf.postprocess.class_aware_nms`).

Then the best ``max_detections`` over all classes are kept, with every box that
ties the last one's score (the official ``kthvalue`` cut), so ``num_detections``
may exceed ``max_detections`` on exact ties.

Classes are independent, so each loop round takes one group of every class at
once; the rounds needed are the largest number of groups of one class. IoUs
are :func:`atss_tf.boxes.iou` on continuous boxes, which equal the official
"+1" areas on inclusive boxes. Equal scores: the later input first, like the
official ``argsort()[::-1]``.
"""

from __future__ import annotations

import tensorflow as tf

from atss_tf import boxes as box_ops
from atss_tf.postprocess import class_aware_nms


def _vote(boxes, scores, classes, valid, num_classes, vote_iou, soft, decayed_threshold):
    """Voting over ``[N]`` inputs -> ``(boxes [2N, 4], scores [2N], classes [2N],
    valid [2N])``: slot ``i`` is the group box of input ``i`` when it led a
    group, slot ``N + i`` its score-decayed copy."""
    n = boxes.shape[0]
    ranked = tf.where(valid, scores, float("-inf"))
    # Ascending and stable, then reversed: the official argsort()[::-1].
    order = tf.reverse(tf.argsort(ranked, stable=True), [0])
    b = tf.gather(boxes, order)
    s = tf.gather(scores, order)
    c = tf.gather(classes, order)
    remaining = tf.gather(valid, order)
    segments = num_classes + 1
    seg = tf.clip_by_value(c, 0, num_classes)
    pos = tf.range(n, dtype=tf.int32)

    def body(remaining, head_box, head_valid, copy_score, copy_valid):
        candidate = tf.where(remaining, pos, n)
        top = tf.minimum(tf.math.unsorted_segment_min(candidate, seg, segments), n)
        top_of = tf.gather(top, seg)  # [N]: the position of the group leader of my class
        has_top = top_of < n
        top_box = tf.gather(b, tf.minimum(top_of, n - 1))
        overlap = box_ops.iou(b, top_box)
        is_top = remaining & tf.equal(pos, top_of)
        member = remaining & has_top & ((overlap >= vote_iou) | is_top)
        weight = tf.where(member, s, 0.0)
        size = tf.math.unsorted_segment_sum(tf.cast(member, tf.int32), seg, segments)
        weight_sum = tf.math.unsorted_segment_sum(weight, seg, segments)
        box_sum = tf.math.unsorted_segment_sum(b * weight[:, None], seg, segments)
        voted = tf.math.divide_no_nan(box_sum, weight_sum[:, None])
        grouped = tf.gather(size, seg) > 1
        leader_box = tf.where(grouped[:, None], tf.gather(voted, seg), b)
        head_box = tf.where(is_top[:, None], leader_box, head_box)
        head_valid = head_valid | is_top
        if soft:
            decayed = s * (1.0 - overlap)
            copied = member & grouped
            copy_score = tf.where(copied, decayed, copy_score)
            copy_valid = copy_valid | (copied & (decayed >= decayed_threshold))
        return [remaining & ~member, head_box, head_valid, copy_score, copy_valid]

    no = tf.zeros([n], tf.bool)
    _, head_box, head_valid, copy_score, copy_valid = tf.while_loop(
        lambda remaining, *_: tf.reduce_any(remaining),
        body,
        [remaining, tf.zeros_like(b), no, tf.zeros_like(s), no],
        maximum_iterations=n,
    )
    # A group leader's score is its group's best: its own (the best remaining).
    return (
        tf.concat([head_box, b], 0),
        tf.concat([s, copy_score], 0),
        tf.concat([c, c], 0),
        tf.concat([head_valid, copy_valid], 0),
    )


def _nms(boxes, scores, classes, valid, nms_iou):
    n = boxes.shape[0]
    keep, count = class_aware_nms(
        boxes[None], scores[None], classes[None], valid[None], nms_iou, max_output=n
    )
    keep, count = keep[0], count[0]
    live = tf.range(n) < count
    pad = [[0, n]]
    return (
        tf.pad(tf.gather(boxes, keep), [[0, n], [0, 0]]),
        tf.pad(tf.gather(scores, keep), pad),
        tf.pad(tf.gather(classes, keep), pad),
        tf.pad(live, pad),
    )


def merge_detections(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    valid: tf.Tensor,
    *,
    method: str,
    num_classes: int,
    vote_iou: float = 0.66,
    decayed_score_threshold: float = 0.05,
    nms_iou: float = 0.6,
    max_detections: int = 1000,
) -> dict[str, tf.Tensor]:
    """Merge one image's pass detections (module docstring).

    Args:
        boxes: float32 ``[N, 4]`` continuous xyxy, all in one image's pixels
            (``N`` static).
        scores: float32 ``[N]``.
        classes: int32 ``[N]``, 1..``num_classes``.
        valid: bool ``[N]``; invalid rows are ignored.
        method: ``soft-vote``, ``vote`` or ``nms``.
        num_classes: C.
        vote_iou: voting groups boxes at IoU ``>=`` this.
        decayed_score_threshold: soft-vote keeps a decayed copy from this score up.
        nms_iou: ``nms`` suppresses at IoU ``>`` this.
        max_detections: the best this many are kept (and their ties).

    Returns:
        ``boxes`` float32 ``[2N, 4]``, ``scores`` ``[2N]``, ``classes`` int32
        ``[2N]`` sorted by descending score, rows from ``num_detections``
        (int32 scalar) on zero.
    """
    boxes = tf.ensure_shape(tf.cast(boxes, tf.float32), [None, 4])
    if not boxes.shape[0]:
        raise ValueError(f"merge_detections needs a static, nonzero number of rows: {boxes.shape}")
    scores = tf.cast(scores, tf.float32)
    classes = tf.cast(classes, tf.int32)
    valid = tf.cast(valid, tf.bool)
    if method in ("soft-vote", "vote"):
        out = _vote(
            boxes,
            scores,
            classes,
            valid,
            num_classes,
            vote_iou,
            method == "soft-vote",
            decayed_score_threshold,
        )
    elif method == "nms":
        out = _nms(boxes, scores, classes, valid, nms_iou)
    else:
        raise ValueError(f"merge method must be soft-vote, vote or nms, got {method!r}")
    m_boxes, m_scores, m_classes, m_valid = out

    ranked = tf.where(m_valid, m_scores, float("-inf"))
    order = tf.argsort(ranked, direction="DESCENDING", stable=True)
    ranked = tf.gather(ranked, order)
    count = tf.reduce_sum(tf.cast(m_valid, tf.int32))
    k = min(max_detections, ranked.shape[0])
    # The official cut keeps every score >= the max_detections-th best.
    threshold = tf.where(count > max_detections, ranked[k - 1], float("-inf"))
    keep = (ranked >= threshold) & tf.math.is_finite(ranked)
    num = tf.reduce_sum(tf.cast(keep, tf.int32))
    return {
        "boxes": tf.where(keep[:, None], tf.gather(m_boxes, order), 0.0),
        "scores": tf.where(keep, tf.gather(m_scores, order), 0.0),
        "classes": tf.where(keep, tf.gather(m_classes, order), 0),
        "num_detections": num,
    }
