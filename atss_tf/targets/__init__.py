"""Training targets: anchors + a sample selector -> dense per-anchor targets.

``TargetEncoder.from_config(config, image_size)`` is the entry point. The
selectors (``SELECTORS[name]``, one module each) share the interface described
in :mod:`atss_tf.targets.common`: :mod:`~atss_tf.targets.dense_atss` (ATSS as
Algorithm 1 writes it - start reading here), :mod:`~atss_tf.targets.atss` (the
same positives computed on windows, what training runs),
:mod:`~atss_tf.targets.iou` (RetinaNet), :mod:`~atss_tf.targets.fcos`,
:mod:`~atss_tf.targets.topk`.
"""

from atss_tf.targets.encoder import SELECTORS, TargetEncoder, check_encoder_size

__all__ = ["SELECTORS", "TargetEncoder", "check_encoder_size"]
