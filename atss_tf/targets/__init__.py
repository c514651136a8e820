"""Training targets: anchors + a sample selector -> dense per-anchor targets.

``TargetEncoder(config, image_size)`` is the entry point. The selectors
(``SELECTORS[name]``, one module each: :mod:`~atss_tf.targets.atss`,
:mod:`~atss_tf.targets.iou`, :mod:`~atss_tf.targets.fcos`,
:mod:`~atss_tf.targets.topk`) share the interface described in
:mod:`atss_tf.targets.common`.
"""

from atss_tf.targets.encoder import SELECTORS, TargetEncoder, check_encoder_size

__all__ = ["SELECTORS", "TargetEncoder", "check_encoder_size"]
