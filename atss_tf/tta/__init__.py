"""The authors' multi-scale, flipped test-time augmentation with box voting (ATSS_SPEC §12).

* :mod:`~atss_tf.tta.passes`: the passes (official order and resize rule) and
  what each does to its detections: flip undone, area filter, scaled to pass 0.
* :mod:`~atss_tf.tta.merge`: the merge of all passes (soft-vote, vote, nms) as
  a static-shape TensorFlow op.
* :mod:`~atss_tf.tta.detect`: :class:`TTADetector` / :func:`detect_tta`, the
  driver that runs a detector's passes on images, one compiled step per canvas.

Its settings are the config's ``tta`` section (:class:`atss_tf.config.TTAConfig`);
``atss-tf evaluate --tta``, ``predict --tta`` and ``export --tta`` run it.
"""

from atss_tf.tta.detect import TTADetector, detect_tta
from atss_tf.tta.merge import merge_detections
from atss_tf.tta.passes import TTAPass, pass_detections, tta_passes

__all__ = [
    "TTADetector",
    "TTAPass",
    "detect_tta",
    "merge_detections",
    "pass_detections",
    "tta_passes",
]
