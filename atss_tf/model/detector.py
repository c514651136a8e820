"""The ATSS detector as a ``keras.Model``: normalise -> ResNet -> FPN -> head -> flatten."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from atss_tf.anchors import AnchorGrid, anchors_for_config
from atss_tf.config import Config, from_dict, to_dict
from atss_tf.model.fpn import LEVELS, FeaturePyramid
from atss_tf.model.head import ATSSHead
from atss_tf.model.layers import ImageNormalization
from atss_tf.model.resnet import ResNetBackbone

PYRAMID_STRIDES = (8, 16, 32, 64, 128)


@keras.saving.register_keras_serializable(package="atss_tf")
class ATSSDetector(keras.Model):
    """ATSS (Zhang et al., CVPR 2020) raw network outputs for a batch of images.

    Args:
        config: the full :class:`~atss_tf.config.Config`; ``config.model`` sets
            the architecture and input normalisation, the rest is kept for
            training / post-processing code. ``get_config`` stores all of it.

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

    Example:
        >>> from atss_tf.config import Config
        >>> model = build_detector(Config())
        >>> out = model(images)  # images [2, 800, 1344, 3]
        >>> grid = model.anchor_grid((800, 1344))
        >>> out["cls_logits"].shape[1] == grid.num_anchors
    """

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(config, Config):
            raise TypeError(f"config must be an atss_tf.config.Config, got {type(config).__name__}")
        resolved = config.resolved()
        m = resolved.model
        if tuple(m.anchors.strides) != PYRAMID_STRIDES:
            raise ValueError(
                f"model.anchors.strides={tuple(m.anchors.strides)} must be {PYRAMID_STRIDES}: "
                "the network predicts on P3..P7"
            )
        self.config = config
        self._anchor_grids: dict[tuple[int, int], AnchorGrid] = {}
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
            name="head",
        )

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

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
        return self.flatten_outputs(self.head_outputs(images))

    def anchor_grid(self, image_size: tuple[int, int]) -> AnchorGrid:
        """Anchors for a canvas ``(height, width)``, in output order (cached)."""
        key = (int(image_size[0]), int(image_size[1]))
        if key not in self._anchor_grids:
            self._anchor_grids[key] = anchors_for_config(key, self.config)
        return self._anchor_grids[key]

    def get_config(self) -> dict:
        config = super().get_config()
        config["config"] = to_dict(self.config)
        return config

    @classmethod
    def from_config(cls, config: dict) -> ATSSDetector:
        config = dict(config)
        cfg = from_dict(config.pop("config"))
        return cls(config=cfg, **config)


def build_detector(config: Config, input_shape: Sequence[int | None] | None = None) -> ATSSDetector:
    """Build an :class:`ATSSDetector` with all weights created.

    With ``config.model.backbone.weights == "imagenet"`` the backbone is
    initialised from keras.applications ResNet50/101 (downloaded by Keras on
    first use; see :mod:`atss_tf.model.imagenet`).

    Args:
        config: the full config.
        input_shape: ``(B, H, W, 3)`` to build for; default any size.

    Returns:
        The built detector.
    """
    model = ATSSDetector(config)
    model.build(tuple(input_shape) if input_shape is not None else (None, None, None, 3))
    if config.model.backbone.weights == "imagenet":
        from atss_tf.model.imagenet import load_imagenet_backbone

        load_imagenet_backbone(model.backbone)
    return model
