"""ATSS training losses (ATSS_SPEC §5): sigmoid focal, centerness-weighted GIoU, centerness BCE.

The paper's Table 1 switches act here too: ``loss.box_loss: smooth_l1`` (the
RetinaNet baseline's smooth L1 on the coder deltas instead of GIoU) and
``model.head.centerness: false`` (no centerness loss; the box loss averaged
over positives instead of weighted by the centerness targets).

All maths is dense and masked (static shapes, no ``boolean_mask``) so the losses
compile with XLA. Inputs of any float dtype are computed in float32.

Normalisation follows the authors' multi-GPU code, seen from one replica: with
``P`` the positives of the *global* batch (summed over replicas) and ``N`` the
number of replicas, the classification and centerness losses are divided by
``max(P / N, 1)`` and the regression loss by the replica-mean of the summed
centerness targets. Each replica's loss is what one official GPU computes, so
the gradient the official code applies (DDP averages replica gradients) is the
gradient of ``sum_r loss_r / N``; for ``P >= N`` that quantity equals the
single-device loss on the whole batch.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from atss_tf import boxes as box_ops
from atss_tf.config import LossConfig


def sigmoid_focal_loss(
    logits: tf.Tensor, labels: tf.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> tf.Tensor:
    """Per-element sigmoid focal loss of RetinaNet / ATSS, not reduced.

    For class ``c`` (1-based) of an anchor with label ``t``:
    ``-alpha * (1 - p)**gamma * log(p)`` if ``t == c``,
    ``-(1 - alpha) * p**gamma * log(1 - p)`` if ``t >= 0`` and ``t != c``, and 0
    for ignored anchors (``t == -1``). The logs are computed stably from the logits.

    Args:
        logits: ``[..., C]`` float class logits.
        labels: ``[...]`` int, -1 ignored, 0 background, 1..C the class.
        alpha: weight of the positive term (the negative term gets ``1 - alpha``).
        gamma: focusing exponent.

    Returns:
        ``[..., C]`` float32 losses; sum them for the ATSS classification loss.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    num_classes = logits.shape[-1]
    classes = tf.range(1, num_classes + 1, dtype=tf.int32)
    is_class = tf.equal(labels[..., None], classes)
    not_ignored = tf.greater_equal(labels, 0)[..., None]
    p = tf.sigmoid(logits)
    log_p = -tf.math.softplus(-logits)
    log_1mp = -tf.math.softplus(logits)
    pos_term = -alpha * tf.pow(1.0 - p, gamma) * log_p
    neg_term = -(1.0 - alpha) * tf.pow(p, gamma) * log_1mp
    zeros = tf.zeros_like(logits)
    return tf.where(is_class, pos_term, tf.where(not_ignored, neg_term, zeros))


def smooth_l1_loss(pred: tf.Tensor, target: tf.Tensor, beta: float) -> tf.Tensor:
    """maskrcnn-benchmark's smooth L1, averaged over the last axis (the four deltas).

    ``0.5 * x**2 / beta`` where ``|x| < beta``, else ``|x| - 0.5 * beta``; that is
    Keras' Huber loss with ``delta = beta``, divided by ``beta`` (L1 for beta 0).
    ``[..., 4]`` float inputs -> ``[...]`` float32.
    """
    pred, target = tf.cast(pred, tf.float32), tf.cast(target, tf.float32)
    if beta <= 0:
        return tf.reduce_mean(tf.abs(pred - target), axis=-1)
    return keras.losses.huber(target, pred, delta=beta) / beta


def _replica_sum_and_count(value: tf.Tensor) -> tuple[tf.Tensor, float]:
    """``value`` summed over the replicas of the current strategy, and their count.

    Under the default strategy (or one replica) the sum is the value itself; the
    all-reduce is skipped there, which keeps the function XLA-compilable. Called
    in a cross-replica context (no replica context) it behaves like one replica.
    """
    value = tf.stop_gradient(value)
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value, 1.0
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value), float(ctx.num_replicas_in_sync)


def _centerness_targets(labels, box_targets, anchors, coder) -> tuple[tf.Tensor, tf.Tensor]:
    """``(target_boxes [B, A, 4], centerness targets [B, A])`` of the positives
    (zero boxes and 0 centerness elsewhere), from the targets alone."""
    positive = labels > 0
    # Non-positive rows carry filler (possibly huge or non-finite): zero deltas
    # are decoded instead, so no NaN reaches the sums or gradients.
    safe_target = tf.where(positive[..., None], box_targets, tf.zeros_like(box_targets))
    target_boxes = tf.stop_gradient(coder.decode(safe_target, anchors))
    offset = 0.5 if coder.inclusive else 0.0
    ltrb = box_ops.ltrb_distances(box_ops.centers(anchors), target_boxes, offset=offset)
    return target_boxes, box_ops.centerness(ltrb) * tf.cast(positive, tf.float32)


def _normalizers(labels: tf.Tensor, ctr_targets: tf.Tensor) -> dict[str, tf.Tensor]:
    num_pos, num_replicas = _replica_sum_and_count(tf.reduce_sum(tf.cast(labels > 0, tf.float32)))
    ctr_sum, _ = _replica_sum_and_count(tf.reduce_sum(ctr_targets))
    return {"pos_avg": tf.maximum(num_pos / num_replicas, 1.0), "ctr_avg": ctr_sum / num_replicas}


def loss_normalizers(
    targets: dict[str, tf.Tensor], anchors: tf.Tensor, coder: box_ops.BoxCoder | box_ops.PointCoder
) -> dict[str, tf.Tensor]:
    """What the losses are divided by, from the targets of a replica's batch:
    ``"pos_avg"`` = ``max(P / N, 1)`` and ``"ctr_avg"`` = the replica-mean of the
    summed centerness targets (module docstring). Computed once for a whole
    batch, they let :func:`atss_losses` of its chunks sum to the loss of the
    batch (gradient accumulation). Float32 scalars; all-reduced over replicas."""
    labels = tf.cast(targets["cls_targets"], tf.int32)
    box_targets = tf.cast(targets["box_targets"], tf.float32)
    _, ctr_targets = _centerness_targets(labels, box_targets, tf.cast(anchors, tf.float32), coder)
    return _normalizers(labels, ctr_targets)


def atss_losses(
    outputs: dict[str, tf.Tensor],
    targets: dict[str, tf.Tensor],
    anchors: tf.Tensor,
    coder: box_ops.BoxCoder | box_ops.PointCoder,
    loss_config: LossConfig,
    normalizers: dict[str, tf.Tensor] | None = None,
    centerness: bool = True,
) -> dict[str, tf.Tensor]:
    """The three ATSS losses of one replica (ATSS_SPEC §5, official ``loss.py``).

    Args:
        outputs: raw head outputs, flattened in anchor order (level-major,
            row-major, then anchors per location), any float dtype:
            ``"cls_logits"`` ``[B, A, C]``, ``"box_regression"`` ``[B, A, 4]``
            (coder deltas), ``"centerness"`` ``[B, A, 1]`` (logits).
        targets: ``"cls_targets"`` ``[B, A]`` int (-1 ignored, 0 background,
            1..C) and ``"box_targets"`` ``[B, A, 4]`` float32 coder-encoded
            ground truth of the positives (any finite or non-finite filler
            elsewhere). Other keys are ignored.
        anchors: ``[A, 4]`` float32 anchors, continuous xyxy.
        coder: the model's box coder (:func:`atss_tf.boxes.coder_for_model`);
            its ``inclusive`` flag sets the GIoU and centerness geometry.
        loss_config: the ``loss`` section (focal alpha / gamma, ``box_loss``,
            its weight).
        normalizers: :func:`loss_normalizers` of the whole batch when these
            targets are one chunk of it; default: those of these targets.
        centerness: the model has a centerness branch (``model.head.centerness``).
            Off: ``centerness_loss`` is 0 and each positive's box loss has
            weight 1, divided by ``max(P / N, 1)`` like the classification loss.

    Returns:
        Float32 scalars ``"cls_loss"``, ``"reg_loss"`` (already times
        ``loss.reg_loss_weight``) and ``"centerness_loss"``. Their sum is the
        per-replica loss of the official multi-GPU code: under a distribution
        strategy that sums replica gradients, scale it by
        ``1 / num_replicas_in_sync`` to get the official update. With no
        positive anchor in the global batch the regression and centerness
        losses are exactly 0 with finite gradients.
    """
    loss_cfg = loss_config
    cls_logits = tf.cast(outputs["cls_logits"], tf.float32)
    box_regression = tf.cast(outputs["box_regression"], tf.float32)
    ctr_logits = tf.cast(outputs["centerness"], tf.float32)[..., 0]
    labels = tf.cast(targets["cls_targets"], tf.int32)
    box_targets = tf.cast(targets["box_targets"], tf.float32)
    anchors = tf.cast(anchors, tf.float32)
    target_boxes, ctr_targets = _centerness_targets(labels, box_targets, anchors, coder)
    if normalizers is None:
        normalizers = _normalizers(labels, ctr_targets)
    pos_avg, ctr_avg = normalizers["pos_avg"], normalizers["ctr_avg"]

    positive = labels > 0  # [B, A]
    pos_f = tf.cast(positive, tf.float32)
    focal = sigmoid_focal_loss(cls_logits, labels, loss_cfg.focal_alpha, loss_cfg.focal_gamma)
    cls_loss = tf.reduce_sum(focal) / pos_avg

    safe_pred = tf.where(positive[..., None], box_regression, tf.zeros_like(box_regression))
    if loss_cfg.box_loss == "smooth_l1":
        safe_target = tf.where(positive[..., None], box_targets, tf.zeros_like(box_targets))
        box_loss = smooth_l1_loss(safe_pred, safe_target, loss_cfg.smooth_l1_beta)
    else:
        pred_boxes = coder.decode(safe_pred, anchors)
        box_loss = box_ops.giou_loss(pred_boxes, target_boxes, inclusive=coder.inclusive)
    if centerness:
        reg_sum = tf.math.divide_no_nan(tf.reduce_sum(box_loss * ctr_targets), ctr_avg)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=ctr_targets, logits=ctr_logits)
        centerness_loss = tf.reduce_sum(bce * pos_f) / pos_avg
    else:
        reg_sum = tf.reduce_sum(box_loss * pos_f) / pos_avg
        centerness_loss = tf.zeros([], tf.float32)
    reg_loss = reg_sum * loss_cfg.reg_loss_weight

    return {"cls_loss": cls_loss, "reg_loss": reg_loss, "centerness_loss": centerness_loss}
