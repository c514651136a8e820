"""Dense per-anchor training targets, XLA-compiled with static shapes.

:class:`TargetEncoder` runs the sample selector named by
``config.assigner.type`` and encodes the matched boxes with the coder named by
``config.model.head.regression``. It is what the input pipeline maps over
images (``dataset.map(lambda b, l, m: enc(b, l, m))``, on the host) and what a
train step may call on device.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from atss_tf import boxes as box_ops
from atss_tf.anchors import AnchorGrid, generate_anchors, level_shape
from atss_tf.config import AssignerConfig, Config, ConfigError, ModelConfig
from atss_tf.targets import atss, dense_atss, fcos, iou, topk
from atss_tf.targets.common import Selector

SELECTORS: dict[str, Selector] = {
    "atss": atss.select,
    "atss_dense": dense_atss.select,
    "iou": iou.select,
    "fcos": fcos.select,
    "fcos_center": fcos.select_center,
    "topk": topk.select,
}


# Per-image memory of an [M, A] float32 matrix (IoUs, distances) the selectors
# build; above it a canvas is refused before any anchor is made.
MAX_ENCODER_MATRIX_BYTES = 2 * 1024**3
# The ATSS selector's window codes hold 4 * (locations of a level) below 2**24.
MAX_ATSS_LEVEL_LOCATIONS = atss.MAX_LEVEL_LOCATIONS


def check_encoder_size(
    model: ModelConfig,
    assigner: AssignerConfig,
    image_size: tuple[int, int],
    num_gt: int,
    what: str = "canvas",
) -> None:
    """Refuse a canvas the encoder cannot handle, in microseconds, before work.

    Raises:
        ConfigError: naming ``what`` (e.g. ``data.canvases``), the size and the limit.
    """
    height, width = int(image_size[0]), int(image_size[1])
    anchors = model.anchors
    cells = [level_shape(height, s) * level_shape(width, s) for s in anchors.strides]
    num_anchors = sum(cells) * anchors.anchors_per_location
    matrix = num_anchors * max(int(num_gt), 1) * 4
    if matrix > MAX_ENCODER_MATRIX_BYTES:
        raise ConfigError(
            f"{what} {height}x{width} is too large for the target encoder: {num_anchors:,} "
            f"anchors x {num_gt} boxes take {matrix / 1024**3:.1f} GiB per image (limit "
            f"{MAX_ENCODER_MATRIX_BYTES / 1024**3:.0f} GiB); use a smaller canvas or "
            "data.max_instances"
        )
    if assigner.type == "atss" and max(cells) > MAX_ATSS_LEVEL_LOCATIONS:
        raise ConfigError(
            f"{what} {height}x{width} is too large for the ATSS selector: its finest level has "
            f"{max(cells):,} locations (limit {MAX_ATSS_LEVEL_LOCATIONS:,})"
        )


class TargetEncoder:
    """Classification and regression targets for every anchor of one canvas.

    Args:
        model: the ``model`` section (anchors, box coder, geometry).
        assigner: the ``assigner`` section (which selector, its settings).
        image_size: the padded canvas ``(height, width)``.
        max_instances: ground-truth rows per image it must handle (the size
            check; any M works).

    :meth:`from_config` takes a whole :class:`~atss_tf.config.Config`.
    Calling it on one image::

        enc = TargetEncoder.from_config(config, image_size=(H, W))
        t = enc(boxes, labels, mask)
        # boxes [M, 4] float32 continuous xyxy canvas pixels, labels [M] int32
        # in 1..C, mask [M] bool (valid rows); M is any static size
        # (data.max_instances); padded rows may hold any values.

    returns a dict of tensors (A = ``enc.anchor_grid.num_anchors``):

    * ``cls_targets`` ``[A]`` int32: -1 ignored, 0 background, 1..C class.
    * ``box_targets`` ``[A, 4]`` float32: the matched box encoded by the
      coder (BOX: (10, 10, 5, 5) deltas; POINT: l, t, r, b / stride), 0 where
      the anchor is not positive.
    * ``matched_gt`` ``[A]`` int32: matched GT row, -1 if none (also for
      ignored anchors).
    * ``matched_boxes`` ``[A, 4]`` float32: the matched GT box (continuous
      xyxy), 0 where the anchor is not positive.

    :meth:`encode_batch` does the same for ``[B, M, ...]`` inputs and adds a
    leading ``B`` to every output. Both are ``tf.function(jit_compile=True)``
    with an input signature: one trace whatever the number of valid boxes;
    XLA compiles once per distinct ``(B, M)``. Zero valid boxes give all
    background with finite values.
    """

    def __init__(
        self,
        model: ModelConfig,
        assigner: AssignerConfig,
        image_size: tuple[int, int],
        max_instances: int = 100,
    ):
        self.model_config = model
        self.assigner = assigner
        self.image_size = (int(image_size[0]), int(image_size[1]))
        check_encoder_size(model, assigner, self.image_size, max_instances)
        self.anchor_grid: AnchorGrid = generate_anchors(self.image_size, model.anchors)
        self.selector: Selector = SELECTORS[assigner.type]
        self.coder = box_ops.coder_for_model(model)

        # Per-instance closures: each encoder owns its traces (and TF does not
        # mistake several encoders for one function retracing).
        def encode_single(boxes, labels, mask):
            return self._encode_single(boxes, labels, mask)

        def encode_batch(boxes, labels, mask):
            return self._encode(boxes, labels, mask)

        self._single_fn = tf.function(
            encode_single,
            input_signature=[
                tf.TensorSpec([None, 4], tf.float32),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None], tf.bool),
            ],
            jit_compile=True,
            autograph=False,
        )
        self._batch_fn = tf.function(
            encode_batch,
            input_signature=[
                tf.TensorSpec([None, None, 4], tf.float32),
                tf.TensorSpec([None, None], tf.int32),
                tf.TensorSpec([None, None], tf.bool),
            ],
            jit_compile=True,
            autograph=False,
        )

    @classmethod
    def from_config(cls, config: Config, image_size: tuple[int, int]) -> TargetEncoder:
        """The encoder of a full config (``model``, ``assigner``, ``data.max_instances``)."""
        return cls(config.model, config.assigner, image_size, config.data.max_instances)

    def __call__(self, boxes, labels, mask) -> dict[str, tf.Tensor]:
        """Targets of one image: ``boxes [M, 4]``, ``labels [M]``, ``mask [M]``."""
        return self._single_fn(*self._cast(boxes, labels, mask))

    def encode_batch(self, boxes, labels, mask) -> dict[str, tf.Tensor]:
        """Targets of a batch: ``boxes [B, M, 4]``, ``labels [B, M]``, ``mask [B, M]``."""
        return self._batch_fn(*self._cast(boxes, labels, mask))

    def tracing_count(self) -> int:
        """How many times the two compiled functions have been traced."""
        return (
            self._single_fn.experimental_get_tracing_count()
            + self._batch_fn.experimental_get_tracing_count()
        )

    @staticmethod
    def _cast(boxes, labels, mask) -> tuple:
        """Tensors are cast (a no-op when the dtype already fits), anything
        else (NumPy, lists) becomes a NumPy array of the signature's dtype."""

        def cast(x, dtype):
            if isinstance(x, (tf.Tensor, tf.Variable)):
                return tf.cast(x, dtype)
            return np.asarray(x, dtype.as_numpy_dtype)

        return cast(boxes, tf.float32), cast(labels, tf.int32), cast(mask, tf.bool)

    def _encode_single(self, boxes, labels, mask) -> dict[str, tf.Tensor]:
        out = self._encode(boxes[None], labels[None], mask[None])
        return {name: value[0] for name, value in out.items()}

    def _encode(self, boxes, labels, mask) -> dict[str, tf.Tensor]:
        # One padding row keeps every gather well defined when M == 0.
        batch = tf.shape(boxes)[0]
        boxes = tf.concat([boxes, tf.zeros([batch, 1, 4])], axis=1)
        labels = tf.concat([labels, tf.zeros([batch, 1], tf.int32)], axis=1)
        mask = tf.concat([mask, tf.zeros([batch, 1], tf.bool)], axis=1)
        boxes = tf.where(mask[..., None], boxes, 0.0)

        matched, ignore = self.selector(
            self.anchor_grid, boxes, mask, self.assigner, self.coder.inclusive
        )
        positive = matched >= 0
        # Rows of the flattened [B * (M + 1)] ground truth.
        row = tf.maximum(matched, 0) + tf.range(batch)[:, None] * tf.shape(boxes)[1]
        cls = tf.where(positive, tf.gather(tf.reshape(labels, [-1]), row), tf.where(ignore, -1, 0))
        gt = tf.gather(tf.reshape(boxes, [-1, 4]), row)  # [B, A, 4]
        anchors = tf.constant(self.anchor_grid.boxes)[None]
        pos4 = positive[..., None]
        encoded = self.coder.encode(tf.where(pos4, gt, anchors), anchors)
        return {
            "cls_targets": cls,
            "box_targets": tf.where(pos4, encoded, 0.0),
            "matched_gt": matched,
            "matched_boxes": tf.where(pos4, gt, 0.0),
        }
