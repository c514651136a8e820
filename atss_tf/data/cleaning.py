"""One set of ground-truth cleaning rules for every source (ATSS_SPEC §8).

Each source decodes to the same *parsed example* - boxes ``[x1, y1, x2, y2]``
(pixels for COCO json, normalised for TFRecords), per-box crowd flags and
category ids, the image size - and is cleaned here:

* :func:`clean_boxes`, per box: crowd boxes dropped (``crowd="drop"``) or
  kept flagged (``"ignore"``); boxes with a NaN or infinite coordinate
  dropped; boxes with width or height <= 0 dropped; boxes clipped to the
  image and dropped if nothing is left.
* :func:`admit_image`, per image: training skips an image left with no
  non-crowd box (the authors' rule), or keeps it as an all-negative example
  with ``keep_empty`` (``data.keep_empty_images``: background images added on
  purpose); beyond ``max_instances`` the first boxes (source order) are kept.

Both count what they do in a :class:`~atss_tf.data.coco.DataReport`. The COCO
json reader runs :func:`clean_boxes` once over all annotations of a file,
the TFRecord pipeline per record inside ``tf.data``, and
:func:`~atss_tf.data.tfrecords.scan_report` over records to count.
"""

from __future__ import annotations

import tensorflow as tf

CROWD_MODES = ("drop", "ignore")

# The per-box outcomes clean_boxes counts, as DataReport keys.
BOX_COUNTS = (
    "crowd_dropped",
    "crowd_kept",
    "nonfinite_dropped",
    "degenerate_dropped",
    "boxes_clipped",
    "outside_dropped",
)


def clean_boxes(
    boxes: tf.Tensor, is_crowd: tf.Tensor, height, width, crowd: str = "drop"
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Clean the boxes of one image, or of many images at once (tf ops, any float dtype).

    Args:
        boxes: ``[n, 4]`` continuous ``[x1, y1, x2, y2]``.
        is_crowd: ``[n]`` bool.
        height, width: the image extent in the boxes' units (1 for
            normalised boxes), scalars or ``[n]`` per box.
        crowd: ``"drop"`` or ``"ignore"``.

    Returns:
        ``(clipped [n, 4], keep [n] bool, outcome [n, 6] bool)``: the boxes
        clipped to ``[0, width] x [0, height]``, which to keep, and per box
        which of :data:`BOX_COUNTS` happened to it.
    """
    if crowd not in CROWD_MODES:
        raise ValueError(f"crowd must be one of {CROWD_MODES}, got {crowd!r}")
    boxes = tf.convert_to_tensor(boxes)
    is_crowd = tf.cast(is_crowd, tf.bool)
    height = tf.cast(height, boxes.dtype)
    width = tf.cast(width, boxes.dtype)
    considered = tf.logical_not(is_crowd) if crowd == "drop" else tf.ones_like(is_crowd)
    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    upper = tf.stack([width, height, width, height], axis=-1)
    clipped = tf.clip_by_value(boxes, tf.zeros_like(boxes), tf.broadcast_to(upper, tf.shape(boxes)))
    changed = tf.reduce_any(tf.not_equal(clipped, boxes), axis=-1)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    valid = considered & finite & tf.logical_not(degenerate)
    keep = valid & tf.logical_not(empty)
    outcome = tf.stack(
        [
            tf.logical_not(considered),
            keep & is_crowd,
            considered & tf.logical_not(finite),
            considered & finite & degenerate,
            keep & changed,
            valid & empty,
        ],
        axis=-1,
    )
    return clipped, keep, outcome


def admit_image(
    report,
    num_annotations: int,
    kept_crowd,
    training: bool,
    max_instances: int | None,
    keep_empty: bool = False,
) -> int | None:
    """The per-image rules, counted in ``report``.

    Args:
        report: a :class:`~atss_tf.data.coco.DataReport`.
        num_annotations: annotations the source listed for the image.
        kept_crowd: bool ``[k]`` crowd flags of the boxes :func:`clean_boxes` kept.
        training: skip images without a non-crowd box (official training).
        max_instances: boxes kept per image (None: all).
        keep_empty: training keeps such images (as negatives) instead.

    Returns:
        How many of the kept boxes to use (the first ones), or None when
        the image is skipped.
    """
    k = len(kept_crowd)
    report.add("images")
    report.add("annotations", num_annotations)
    if training and not any(not c for c in kept_crowd):
        if not keep_empty:
            report.add(
                "images_without_valid_boxes_skipped"
                if num_annotations
                else "images_without_annotations_skipped"
            )
            return None
        report.add("images_kept_as_negatives")
    elif not num_annotations:
        report.add("images_without_annotations_kept")
    if max_instances is not None and k > max_instances:
        report.add("images_truncated")
        report.add("boxes_truncated", k - max_instances)
        k = max_instances
    report.add("images_kept")
    report.add("boxes_kept", k)
    return k
