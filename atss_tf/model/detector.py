"""The ATSS detector as a ``keras.Model``: normalise -> ResNet -> FPN -> head -> flatten.

It knows the network and how its outputs decode (a
:class:`~atss_tf.config.DetectorConfig`, what its ``.keras`` file holds, see
:mod:`atss_tf.model.file_format`). How it is trained - the sample selector
and the loss settings - is given to ``compile``; the losses, targets and
post-processing it calls live in :mod:`atss_tf.losses`, :mod:`atss_tf.targets`
and :mod:`atss_tf.postprocess`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf
from keras import ops

from atss_tf.anchors import AnchorGrid, generate_anchors
from atss_tf.boxes import coder_for_model
from atss_tf.config import AssignerConfig, Config, DetectorConfig, LossConfig
from atss_tf.data.transforms import boxes_to_original, valid_image_size
from atss_tf.losses import atss_losses, loss_normalizers
from atss_tf.model.canvas_steps import (
    CanvasStepFunction,
    make_iterator_function,
    make_predict_function,
)
from atss_tf.model.file_format import detector_config_from_file, detector_config_to_file
from atss_tf.model.fpn import LEVELS, FeaturePyramid
from atss_tf.model.head import ATSSHead
from atss_tf.model.layers import ImageNormalization
from atss_tf.model.resnet import ResNetBackbone
from atss_tf.postprocess import postprocess
from atss_tf.targets import TargetEncoder

PYRAMID_STRIDES = (8, 16, 32, 64, 128)


@keras.saving.register_keras_serializable(package="atss_tf")
class ATSSDetector(keras.Model):
    """ATSS (Zhang et al., CVPR 2020) raw network outputs for a batch of images.

    Args:
        config: a :class:`~atss_tf.config.DetectorConfig` (a training
            ``Config`` is reduced to its ``detector_config()``): architecture, anchors, input
            normalisation, box geometry, post-processing, class names and
            test-time input size. ``get_config`` stores it and a format version.

    Call:
        ``images``: ``[B, H, W, 3]`` RGB 0..255 (any real dtype) on a padded
        canvas, H and W multiples of 32 for the usual pyramid sizes.

    Returns:
        dict of float32 tensors, anchors in the order of
        :func:`atss_tf.anchors.generate_anchors` (level-major, row-major, then
        anchor-per-location)::

            "cls_logits":     [B, A, num_classes]
            "box_regression": [B, A, 4]  (already times the level's scale)
            "centerness":     [B, A, 1]

    Sub-layers: ``normalizer`` (:class:`ImageNormalization`), ``backbone``
    (:class:`ResNetBackbone`), ``fpn`` (:class:`FeaturePyramid`), ``head``
    (:class:`ATSSHead`). :meth:`features` gives the pyramid maps and
    :meth:`head_outputs` the per-level NHWC head maps.

    Training: ``compile(optimizer, assigner=cfg.assigner, loss_config=cfg.loss)``
    sets the sample selector and loss settings (defaults: ``Config()``'s).

    Example:
        >>> from atss_tf.config import Config
        >>> model = build_detector(Config())
        >>> out = model(images)  # images [2, 800, 1344, 3]
        >>> grid = model.anchor_grid((800, 1344))
        >>> out["cls_logits"].shape[1] == grid.num_anchors
    """

    def __init__(self, config: DetectorConfig | Config, **kwargs):
        super().__init__(**kwargs)
        if isinstance(config, Config):
            config = config.detector_config()
        if not isinstance(config, DetectorConfig):
            raise TypeError(
                "config must be an atss_tf.config.DetectorConfig (Config.detector_config()), "
                f"got {type(config).__name__}"
            )
        m = config.model
        if tuple(m.anchors.strides) != PYRAMID_STRIDES:
            raise ValueError(
                f"model.anchors.strides={tuple(m.anchors.strides)} must be {PYRAMID_STRIDES}: "
                "the network predicts on P3..P7"
            )
        self.detector_config = config
        self.coder = coder_for_model(m)
        self.assigner_config: AssignerConfig = Config().assigner
        self.loss_config = LossConfig()
        self.accumulate_steps = 1
        self._anchor_grids: dict[tuple[int, int], AnchorGrid] = {}
        self._encoders: dict[tuple[int, int], object] = {}
        self.loss_trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", "cls_loss", "reg_loss", "centerness_loss")
        }
        b = m.backbone
        self.normalizer = ImageNormalization(
            mean=m.pixel_mean, std=m.pixel_std, bgr=m.input_bgr, name="normalizer"
        )
        self.backbone = ResNetBackbone(
            depth=b.depth,
            stride_in_1x1=b.stride_in_1x1,
            groups=b.groups,
            width_per_group=b.width_per_group,
            width_multiplier=b.width_multiplier,
            freeze_at=b.freeze_at,
            norm=b.norm,
            dcn_stages=b.dcn_stages,
            name="backbone",
        )
        self.fpn = FeaturePyramid(
            channels=m.fpn.channels, p7_from_relu=m.fpn.p7_from_relu, name="fpn"
        )
        h = m.head
        self.head = ATSSHead(
            num_classes=m.num_classes,
            num_anchors=m.anchors.anchors_per_location,
            num_levels=len(LEVELS),
            num_convs=h.num_convs,
            channels=h.channels,
            use_group_norm=h.use_group_norm,
            group_norm_groups=h.group_norm_groups,
            prior_prob=h.prior_prob,
            regression=h.regression,
            centerness=h.centerness,
            learnable_scales=h.learnable_scales,
            dcn=h.dcn,
            name="head",
        )

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def class_names(self) -> list[str]:
        """Names of labels 1..C (``model.class_names``, else ``class <k>``)."""
        names = list(self.detector_config.model.class_names)
        return names or [f"class {k}" for k in range(1, self.num_classes + 1)]

    @property
    def category_ids(self) -> list[int]:
        """The dataset category id of labels 1..C (``model.category_ids``, else
        the labels themselves)."""
        ids = list(self.detector_config.model.category_ids)
        return ids or list(range(1, self.num_classes + 1))

    def compile(
        self,
        optimizer="sgd",
        *,
        assigner: AssignerConfig | None = None,
        loss_config: LossConfig | None = None,
        accumulate_steps: int = 1,
        **kwargs,
    ) -> None:
        """``keras.Model.compile`` plus how to train: ``assigner`` (the sample
        selector and its settings) and ``loss_config`` (focal and GIoU
        settings), None keeping the current ones (``Config()``'s at first);
        ``accumulate_steps``: each train step splits its batch into this many
        chunks run one after the other, gradients summed
        (``train.accumulate_steps``)."""
        if assigner is not None:
            self.assigner_config = assigner
            self._encoders.clear()
        if loss_config is not None:
            self.loss_config = loss_config
        if accumulate_steps < 1:
            raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}")
        self.accumulate_steps = int(accumulate_steps)
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self) -> None:
        # The compile config would put the optimizer and its learning-rate
        # schedule into every .keras file; a model file carries only the model.
        return None

    @property
    def anchors_per_location(self) -> int:
        return self.head.num_anchors

    def build(self, input_shape: Sequence[int | None] = (None, None, None, 3)) -> None:
        self.normalizer.build(input_shape)
        self.backbone.build(input_shape)
        c = self.backbone.out_channels
        self.fpn.build({k: (None, None, None, v) for k, v in c.items()})
        fpn_shape = (None, None, None, self.fpn.channels)
        self.head.build([fpn_shape] * len(LEVELS))
        self.built = True

    def features(self, images) -> dict:
        """FPN maps ``{"p3": .., ..., "p7": ..}``, NHWC, compute dtype."""
        x = self.normalizer(images)
        return self.fpn(self.backbone(x))

    def head_outputs(self, images) -> dict:
        """Per-level NHWC head maps: dict of lists (see :class:`ATSSHead`)."""
        pyramid = self.features(images)
        return self.head([pyramid[level] for level in LEVELS])

    def flatten_outputs(self, per_level: dict) -> dict:
        """Per-level NHWC head maps -> ``[B, A, k]`` float32 in anchor order.

        Channel ``a * k + j`` of a level holds anchor ``a`` (ratio-major, then
        scale), component ``j`` - the official layout.
        """
        widths = {"cls_logits": self.num_classes, "box_regression": 4, "centerness": 1}
        out = {}
        for key, k in widths.items():
            maps = per_level[key]
            flat = [ops.reshape(x, (ops.shape(x)[0], -1, k)) for x in maps]
            out[key] = ops.cast(ops.concatenate(flat, axis=1), "float32")
        return out

    def call(self, images, training: bool | None = None) -> dict:
        # A dataset element's inputs dict works too (Keras passes it when building).
        return self.flatten_outputs(self.head_outputs(self._images(images)))

    # ------------------------------------------------------------------ #
    # Keras fit / evaluate / predict
    # ------------------------------------------------------------------ #

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    @staticmethod
    def _images(x):
        return x["images"] if isinstance(x, dict) else x

    def _targets(self, x, y, image_size: tuple[int, int]) -> dict:
        """Dense per-anchor targets: from the data pipeline when ``y`` holds them
        (``cls_targets``/``box_targets``), else encoded here (targets on device)
        from the padded ground truth ``gt_boxes``/``gt_labels``/``gt_mask`` in
        ``y`` (``build_dataset(..., with_gt=True)``) or in ``x``."""
        if isinstance(y, dict) and "cls_targets" in y:
            return y
        gt = next((d for d in (y, x) if isinstance(d, dict) and "gt_boxes" in d), None)
        if gt is None:
            raise ValueError(
                "training needs targets: y with 'cls_targets' and 'box_targets' (from "
                "atss_tf.targets.TargetEncoder in tf.data) or 'gt_boxes', 'gt_labels' and "
                "'gt_mask' in y or x (build_dataset(..., with_gt=True))"
            )
        if image_size not in self._encoders:
            self._encoders[image_size] = TargetEncoder(
                self.detector_config.model,
                self.assigner_config,
                image_size,
                max_instances=gt["gt_boxes"].shape[-2] or 1,
            )
        return self._encoders[image_size].encode_batch(
            gt["gt_boxes"], gt["gt_labels"], gt["gt_mask"]
        )

    def _loss_inputs(self, x, y) -> tuple:
        """``(images, dense targets, anchors)`` of a batch on its canvas."""
        images = self._images(x)
        image_size = canvas_size(images)
        targets = self._targets(x, y, image_size)
        anchors = ops.convert_to_tensor(self.anchor_grid(image_size).boxes)
        return images, targets, anchors

    def _forward_losses(self, images, targets, anchors, training: bool, normalizers=None) -> dict:
        """Forward pass and the three ATSS losses plus their sum ``"loss"``."""
        outputs = self(images, training=training)
        losses = atss_losses(
            outputs,
            targets,
            anchors,
            self.coder,
            self.loss_config,
            normalizers,
            centerness=self.detector_config.model.head.centerness,
        )
        losses["loss"] = losses["cls_loss"] + losses["reg_loss"] + losses["centerness_loss"]
        return losses

    def compute_atss_losses(self, x, y, training: bool) -> dict:
        """Forward pass and the three ATSS losses (official per-replica values)."""
        return self._forward_losses(*self._loss_inputs(x, y), training=training)

    def _update_trackers(self, losses: dict) -> dict:
        for name, tracker in self.loss_trackers.items():
            tracker.update_state(losses[name])
        return {name: tracker.result() for name, tracker in self.loss_trackers.items()}

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        # The official per-replica loss is averaged over GPUs by DDP; Keras
        # sums replica gradients, so each replica contributes loss / N.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.trainable_variables
        if self.accumulate_steps > 1:
            grads, losses = self._accumulated_gradients(x, y, replicas)
        else:
            with tf.GradientTape() as tape:
                losses = self.compute_atss_losses(x, y, training=True)
                loss = self.optimizer.scale_loss(losses["loss"] / replicas)
            grads = tape.gradient(loss, variables)
        self.optimizer.apply(grads, variables)
        return self._update_trackers(losses)

    def _accumulated_gradients(self, x, y, replicas: int) -> tuple[list, dict]:
        """Gradients and losses of the batch, computed in ``accumulate_steps``
        equal chunks one after the other (a ``tf.while_loop``: one chunk's
        activations live at a time). The loss normalisers come from the whole
        batch's targets first, so the chunks' losses and gradients sum to the
        batch's: exact up to float order with frozen BatchNorm (trainable
        BatchNorm sees chunk statistics)."""
        images, targets, anchors = self._loss_inputs(x, y)
        targets = {k: targets[k] for k in ("cls_targets", "box_targets")}
        normalizers = loss_normalizers(targets, anchors, self.coder)
        n, batch = self.accumulate_steps, images.shape[0]
        if batch is None or batch % n:
            raise ValueError(
                f"train.accumulate_steps={n} must divide each replica's batch, got {batch} images"
            )

        def chunks(t):
            return tf.reshape(t, [n, batch // n, *t.shape[1:]])

        images, targets = chunks(images), {k: chunks(v) for k, v in targets.items()}
        variables = self.trainable_variables
        names = ("loss", "cls_loss", "reg_loss", "centerness_loss")

        def body(i, grads, sums):
            with tf.GradientTape() as tape:
                chunk_targets = {k: v[i] for k, v in targets.items()}
                losses = self._forward_losses(images[i], chunk_targets, anchors, True, normalizers)
                loss = self.optimizer.scale_loss(losses["loss"] / replicas)
            chunk_grads = tape.gradient(loss, variables)
            grads = [a + tf.cast(g, a.dtype) for a, g in zip(grads, chunk_grads)]
            return i + 1, grads, [s + losses[k] for s, k in zip(sums, names)]

        start = (
            tf.constant(0),
            [tf.zeros(v.shape, v.dtype) for v in variables],
            [tf.constant(0.0)] * len(names),
        )
        _, grads, sums = tf.while_loop(
            lambda i, *_: i < n, body, start, parallel_iterations=1, maximum_iterations=n
        )
        return grads, dict(zip(names, sums))

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._update_trackers(self.compute_atss_losses(x, y, training=False))

    def predict_step(self, data):
        """Detections for a batch: ``x`` is images ``[B, H, W, 3]`` (RGB 0..255 on
        a canvas) or a dict with ``images`` and optionally ``image_info``
        (:mod:`atss_tf.data.transforms`).

        Returns dict ``boxes`` ``[B, D, 4]`` continuous xyxy - in original image
        pixels when ``image_info`` is given (clipped to the valid image area,
        then mapped back and clipped to the original size), else canvas
        pixels -, ``scores`` ``[B, D]``, ``classes`` ``[B, D]`` int32 (1..C,
        0 = padding), ``num_detections`` ``[B]`` int32; D =
        ``postprocess.max_detections``.
        """
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        images = self._images(x)
        image_info = x.get("image_info") if isinstance(x, dict) else None
        outputs = self(images, training=False)
        grid = self.anchor_grid(canvas_size(images))
        detections = postprocess(
            outputs,
            grid,
            self.coder,
            self.detector_config.postprocess,
            centerness=self.detector_config.model.head.centerness,
            image_sizes=None if image_info is None else valid_image_size(image_info),
        )
        if image_info is not None:
            detections["boxes"] = boxes_to_original(detections["boxes"], image_info)
        return detections

    # Keras builds one graph for every batch and relaxes H and W to None once a
    # second canvas arrives; these give each canvas its own static-shape
    # function instead (see atss_tf.model.canvas_steps).
    def _canvas_step(self, step, reduction: str) -> CanvasStepFunction:
        return CanvasStepFunction(
            step,
            lambda: self.distribute_strategy,
            jit_compile=bool(self.jit_compile),
            reduction=reduction,
            eager=bool(self.run_eagerly),
        )

    def make_train_function(self, force: bool = False):
        if self.train_function is None or force:
            self.train_function = make_iterator_function(
                self._canvas_step(self.train_step, "auto"), self.steps_per_execution
            )
        return self.train_function

    def make_test_function(self, force: bool = False):
        if self.test_function is None or force:
            self.test_function = make_iterator_function(
                self._canvas_step(self.test_step, "auto"), self.steps_per_execution
            )
        return self.test_function

    def make_predict_function(self, force: bool = False):
        if self.predict_function is None or force:
            self.predict_function = make_predict_function(
                self._canvas_step(self.predict_step, "concat")
            )
        return self.predict_function

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a distribution strategy Keras averages a first batch over the
        # replicas to build an unbuilt model, which fails on boolean inputs
        # (gt_mask). The detector is built when constructed; only an optimizer
        # compiled later may still need its variables.
        if not self.built:
            return super()._maybe_symbolic_build(iterator, data_batch)
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def step_tracing_counts(self) -> dict[str, list[int]]:
        """Traces per compiled input signature of each Keras step function
        (``train``/``test``/``predict``); one entry per canvas and batch size
        seen, each 1 when nothing was retraced."""
        functions = {
            "train": self.train_function,
            "test": self.test_function,
            "predict": self.predict_function,
        }
        return {
            name: fn.step.tracing_counts() if fn is not None else []
            for name, fn in functions.items()
        }

    def anchor_grid(self, image_size: tuple[int, int]) -> AnchorGrid:
        """Anchors for a canvas ``(height, width)``, in output order (cached)."""
        key = (int(image_size[0]), int(image_size[1]))
        if key not in self._anchor_grids:
            self._anchor_grids[key] = generate_anchors(key, self.detector_config.model.anchors)
        return self._anchor_grids[key]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(detector_config_to_file(self.detector_config))
        return config

    @classmethod
    def from_config(cls, config: dict) -> ATSSDetector:
        config = dict(config)
        detector = detector_config_from_file(config)
        for key in ("format_version", "detector", "config"):
            config.pop(key, None)
        return cls(detector, **config)


def canvas_size(images) -> tuple[int, int]:
    """Static ``(height, width)`` of a batch of canvases ``[B, H, W, 3]``.

    Raises:
        ValueError: H or W unknown at trace time (anchors, targets and
            post-processing are built per canvas).
    """
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError(
            f"ATSSDetector needs images of a static canvas size, got shape {images.shape}: call "
            "the model through fit/evaluate/predict (one compiled step per canvas) or a "
            "tf.function whose input shape fixes H and W"
        )
    return int(height), int(width)


def build_detector(
    config: Config | DetectorConfig, input_shape: Sequence[int | None] | None = None
) -> ATSSDetector:
    """Build an :class:`ATSSDetector` with all weights created (freshly
    initialised: ``model.backbone.weights: imagenet`` is loaded by
    :func:`atss_tf.training.fit.build_training_model`, where training starts).

    Args:
        config: a training :class:`~atss_tf.config.Config` (its
            ``detector_config()`` is taken) or a ``DetectorConfig``.
        input_shape: ``(B, H, W, 3)`` to build for; default any size.

    Returns:
        The built detector (not compiled).
    """
    if isinstance(config, Config):
        config = config.detector_config()
    model = ATSSDetector(config)
    model.build(tuple(input_shape) if input_shape is not None else (None, None, None, 3))
    return model
