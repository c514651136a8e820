"""Detections from raw ATSS head outputs (ATSS_SPEC §7, official ``inference.py``).

Per level: ``p = sigmoid(cls)``, candidates ``p > score_threshold``, the best
``pre_nms_topk`` of ``p * sigmoid(centerness)``, decoded and clipped to the
image. Over all levels: class-aware greedy NMS, the ``max_detections`` best.

Everything has static shapes and compiles with XLA (``jit_compile=True``):
per-level top-k instead of boolean masks, and a padded, tiled greedy NMS
(:func:`class_aware_nms`) instead of ``combined_non_max_suppression``.
"""

from __future__ import annotations

import tensorflow as tf

from atss_tf import boxes as box_ops
from atss_tf.anchors import AnchorGrid
from atss_tf.config import PostprocessConfig

# Candidates are processed by the NMS in score order, this many at a time.
NMS_TILE = 256


def _level_candidates(
    cls_logits: tf.Tensor,
    ctr_logits: tf.Tensor,
    score_threshold: float,
    topk: int,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Top ``topk`` (anchor, class) pairs of one level by ``p * ctr`` among ``p > thr``.

    ``cls_logits`` ``[B, n, C]``, ``ctr_logits`` ``[B, n]``. Returns
    ``(p, ctr_score, anchor_index, class_index)`` each ``[B, k]`` with
    ``k = min(topk, n * C)``, ``ctr_score = p * ctr``; pairs that fail the
    threshold (only present when fewer than ``k`` pass) have ``p <= thr``.

    A single top-k over the ``n * C`` pairs is exact but slow where XLA sorts
    the whole array (P3 of a 1024 canvas holds 1.3M pairs). Two stages select
    the same pairs: a pair in the top ``k`` has a per-anchor maximum at least
    its own score, and fewer than ``k`` anchors can beat it, so its anchor is
    among the top ``k`` anchors by maximum score; the second stage takes the
    top ``k`` pairs of those anchors. (Only the choice among exactly equal
    scores at the cut can differ, which the official top-k leaves unspecified.)
    """
    num_anchors, num_classes = cls_logits.shape[1], cls_logits.shape[2]
    p = tf.sigmoid(cls_logits)
    ctr = tf.sigmoid(ctr_logits)
    k1 = min(topk, num_anchors)
    # Multiplying by a positive factor preserves order, so max_c(p) * ctr is the
    # anchor's best pair score.
    p_max = tf.reduce_max(p, axis=-1)
    anchor_score = tf.where(p_max > score_threshold, p_max * ctr, -1.0)
    _, anchor_sel = tf.math.top_k(anchor_score, k=k1)  # [B, k1]
    p_sel = tf.gather(p, anchor_sel, batch_dims=1)  # [B, k1, C]
    ctr_sel = tf.gather(ctr, anchor_sel, batch_dims=1)  # [B, k1]
    pair_score = tf.where(p_sel > score_threshold, p_sel * ctr_sel[..., None], -1.0)
    k2 = min(topk, k1 * num_classes)
    _, flat = tf.math.top_k(tf.reshape(pair_score, [-1, k1 * num_classes]), k=k2)
    row = flat // num_classes
    cls_index = flat % num_classes
    anchor_index = tf.gather(anchor_sel, row, batch_dims=1)
    p_top = tf.gather(tf.reshape(p_sel, [-1, k1 * num_classes]), flat, batch_dims=1)
    ctr_top = tf.gather(ctr_sel, row, batch_dims=1)
    return p_top, p_top * ctr_top, anchor_index, cls_index


def class_aware_nms(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    valid: tf.Tensor,
    iou_threshold: float,
    max_output: int,
    tile_size: int = NMS_TILE,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact greedy class-aware NMS with static shapes (XLA-compilable).

    Greedy NMS in descending score order: a box is kept unless a kept box of the
    same class with a higher rank overlaps it with IoU > ``iou_threshold``
    (``boxes.iou``, continuous areas, which equal the official "+1" areas on
    inclusive boxes). Equal scores rank by position (lower index first).

    Why not coordinate offsets per class with ``non_max_suppression_padded``:
    shifting boxes by ``class * canvas`` costs float32 precision (ulp 0.016 px
    near 2**17), which can flip IoU comparisons near the threshold. Here the
    class test is a mask on IoUs of unshifted boxes. Candidates are processed in
    tiles of ``tile_size``: a tile is first suppressed by the boxes kept from
    earlier tiles (at most ``max_output``, gathered from a buffer), then by
    itself, solving "kept = valid and not suppressed by an earlier kept box"
    by fixed-point iteration (unique on this triangular system, reached after
    at most ``tile_size`` rounds, usually a few). The loop stops once every
    image has ``max_output`` boxes, as the first kept boxes are final.

    Args:
        boxes: ``[B, K, 4]`` float32 xyxy.
        scores: ``[B, K]`` float32.
        classes: ``[B, K]`` int32.
        valid: ``[B, K]`` bool; invalid boxes are neither kept nor suppress.
        iou_threshold: suppress at IoU strictly above this.
        max_output: number of output slots ``D``.
        tile_size: candidates per tile.

    Returns:
        ``(indices, num_kept)``: ``[B, D]`` int32 indices into ``K`` of the
        kept boxes in descending score order (0 in padding slots) and ``[B]``
        int32 number of valid slots.
    """
    batch = tf.shape(boxes)[0]
    num = boxes.shape[1]
    ranked = tf.where(valid, scores, float("-inf"))
    order = tf.argsort(ranked, axis=-1, direction="DESCENDING", stable=True)
    num_tiles = max(1, -(-num // tile_size))
    pad = num_tiles * tile_size - num
    s_boxes = tf.pad(tf.gather(boxes, order, batch_dims=1), [[0, 0], [0, pad], [0, 0]])
    s_classes = tf.pad(tf.gather(classes, order, batch_dims=1), [[0, 0], [0, pad]])
    s_valid = tf.pad(tf.gather(valid, order, batch_dims=1), [[0, 0], [0, pad]])
    s_order = tf.pad(order, [[0, 0], [0, pad]])

    slots = tf.range(max_output, dtype=tf.int32)
    earlier = tf.range(tile_size)[None, :] < tf.range(tile_size)[:, None]  # [t, j]: j < t

    def cond(i, buf, count):
        more = tf.reduce_any(s_valid[:, tf.minimum(i * tile_size, num_tiles * tile_size - 1)])
        return (i < num_tiles) & tf.reduce_any(count < max_output) & more

    def body(i, buf, count):
        start = i * tile_size
        t_boxes = tf.slice(s_boxes, [0, start, 0], [-1, tile_size, 4])
        t_classes = tf.slice(s_classes, [0, start], [-1, tile_size])
        t_valid = tf.slice(s_valid, [0, start], [-1, tile_size])

        k_boxes = tf.gather(s_boxes, buf, batch_dims=1)  # [B, D, 4]
        k_classes = tf.gather(s_classes, buf, batch_dims=1)
        k_live = slots[None, :] < count[:, None]
        hit = (
            (box_ops.iou(t_boxes[:, :, None], k_boxes[:, None]) > iou_threshold)
            & tf.equal(t_classes[:, :, None], k_classes[:, None])
            & k_live[:, None]
        )
        base = t_valid & ~tf.reduce_any(hit, axis=2)

        suppresses = (
            (box_ops.iou(t_boxes[:, :, None], t_boxes[:, None]) > iou_threshold)
            & tf.equal(t_classes[:, :, None], t_classes[:, None])
            & earlier[None]
        )  # [B, t, j]: j outranks t and would suppress it

        def step(keep, _changed):
            new = base & ~tf.reduce_any(suppresses & keep[:, None, :], axis=2)
            return [new, tf.reduce_any(new != keep)]

        keep, _ = tf.while_loop(
            lambda keep, changed: changed,
            step,
            [base, tf.constant(True)],
            maximum_iterations=tile_size,
        )

        keep_i = tf.cast(keep, tf.int32)
        position = count[:, None] + tf.cumsum(keep_i, axis=1, exclusive=True)  # [B, t]
        write = keep[:, :, None] & tf.equal(position[:, :, None], slots[None, None])  # [B, t, D]
        index = start + tf.range(tile_size, dtype=tf.int32)
        buf = buf + tf.reduce_sum(tf.where(write, index[None, :, None], 0), axis=1)
        return [i + 1, buf, count + tf.reduce_sum(keep_i, axis=1)]

    _, buf, count = tf.while_loop(
        cond,
        body,
        [tf.constant(0), tf.zeros([batch, max_output], tf.int32), tf.zeros([batch], tf.int32)],
    )
    num_kept = tf.minimum(count, max_output)
    live = slots[None, :] < num_kept[:, None]
    indices = tf.where(live, tf.gather(s_order, buf, batch_dims=1), 0)
    return indices, num_kept


def postprocess(
    outputs: dict[str, tf.Tensor],
    anchor_grid: AnchorGrid,
    coder: box_ops.BoxCoder | box_ops.PointCoder,
    config: PostprocessConfig,
    image_sizes: tf.Tensor | None = None,
    centerness: bool = True,
) -> dict[str, tf.Tensor]:
    """Final detections of a batch (ATSS_SPEC §7).

    Args:
        outputs: raw head outputs flattened in anchor order, any float dtype:
            ``"cls_logits"`` ``[B, A, C]``, ``"box_regression"`` ``[B, A, 4]``,
            ``"centerness"`` ``[B, A, 1]`` (logits).
        anchor_grid: the anchors of the canvas the outputs belong to.
        coder: the model's box coder (:func:`atss_tf.boxes.coder_for_model`);
            with ``coder.inclusive`` boxes are clamped as the authors do.
        config: the ``postprocess`` section.
        image_sizes: optional ``[B, 2]`` (height, width) of the valid, unpadded
            image of each batch item in canvas pixels; boxes are clipped to it
            (``[0, w] x [0, h]``; with ``model.inclusive_geometry`` the authors'
            clamp, see below). None clips to the canvas ``anchor_grid.image_size``.
        centerness: the model has a centerness branch (``model.head.centerness``);
            off, ``outputs["centerness"]`` is ignored: candidates are ranked by
            ``p`` and a detection's score is ``p``.

    Returns:
        ``"boxes"`` ``[B, D, 4]`` float32 continuous xyxy on the canvas,
        ``"scores"`` ``[B, D]`` float32, ``"classes"`` ``[B, D]`` int32 (1..C,
        0 for padding) and ``"num_detections"`` ``[B]`` int32, with
        ``D = postprocess.max_detections``; rows sorted by descending score,
        padding rows all zero.

    The authors keep every NMS survivor scoring at least the
    ``max_detections``-th best (``kthvalue``), i.e. more rows when scores tie
    exactly at that rank; here the first ``max_detections`` in rank order.
    """
    pp = config
    inclusive = coder.inclusive
    # The anchor count is static even where a traced batch dimension made the
    # flattened outputs' shape unknown (Keras' predict_function).
    num_anchors = anchor_grid.num_anchors
    cls_logits = tf.ensure_shape(
        tf.cast(outputs["cls_logits"], tf.float32), [None, num_anchors, None]
    )
    box_regression = tf.ensure_shape(
        tf.cast(outputs["box_regression"], tf.float32), [None, num_anchors, 4]
    )
    ctr_logits = tf.ensure_shape(tf.cast(outputs["centerness"], tf.float32), [None, num_anchors, 1])
    ctr_logits = ctr_logits[..., 0]
    if not centerness:
        # sigmoid(+inf) = 1: rank by p alone.
        ctr_logits = tf.fill(tf.shape(ctr_logits), float("inf"))

    if image_sizes is None:
        height, width = (float(v) for v in anchor_grid.image_size)
    else:
        sizes = tf.cast(image_sizes, tf.float32)
        height, width = sizes[:, 0:1], sizes[:, 1:2]

    all_boxes, all_scores, all_classes, all_valid = [], [], [], []
    for start, count in zip(anchor_grid.level_starts, anchor_grid.num_per_level):
        stop = start + count
        p, pc, anchor_index, cls_index = _level_candidates(
            cls_logits[:, start:stop],
            ctr_logits[:, start:stop],
            pp.score_threshold,
            pp.pre_nms_topk,
        )
        deltas = tf.gather(box_regression[:, start:stop], anchor_index, batch_dims=1)
        anchors = tf.gather(tf.constant(anchor_grid.boxes[start:stop]), anchor_index)
        decoded = coder.decode(deltas, anchors)
        if inclusive:
            # The authors clamp inclusive boxes to [0, w - 1]: in our coordinates
            # x1 in [0, w - 1] and x2 in [1, w]. This differs from the continuous
            # clip only where x1 > w - 1 or x2 < 1 (boxes in or beyond the last
            # pixel row/column), which keep 1 px instead of collapsing.
            decoded = box_ops.from_inclusive(
                box_ops.clip_boxes(box_ops.to_inclusive(decoded), height - 1.0, width - 1.0)
            )
        else:
            decoded = box_ops.clip_boxes(decoded, height, width)
        all_boxes.append(decoded)
        if not centerness:
            all_scores.append(p)
        else:
            all_scores.append(tf.sqrt(pc) if pp.score_mode == "sqrt" else pc)
        all_classes.append(cls_index + 1)
        all_valid.append(p > pp.score_threshold)

    boxes = tf.concat(all_boxes, axis=1)
    scores = tf.concat(all_scores, axis=1)
    classes = tf.cast(tf.concat(all_classes, axis=1), tf.int32)
    valid = tf.concat(all_valid, axis=1)

    keep, num_detections = class_aware_nms(
        boxes, scores, classes, valid, pp.nms_iou, pp.max_detections
    )
    live = tf.range(pp.max_detections)[None, :] < num_detections[:, None]
    out_boxes = tf.gather(boxes, keep, batch_dims=1)
    return {
        "boxes": tf.where(live[..., None], out_boxes, 0.0),
        "scores": tf.where(live, tf.gather(scores, keep, batch_dims=1), 0.0),
        "classes": tf.where(live, tf.gather(classes, keep, batch_dims=1), 0),
        "num_detections": num_detections,
    }
