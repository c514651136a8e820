"""ATSS head: classification and box towers shared across levels (ATSS_SPEC §4).

Official names (prefix ``rpn.head.``) -> Keras layers:

=====================================  ===================================
official                               Keras layer / weight
=====================================  ===================================
``cls_tower.{3i}.{weight,bias}``       ``cls_tower_conv{i}.{kernel,bias}``
``cls_tower.{3i+1}.{weight,bias}``     ``cls_tower_norm{i}.{gamma,beta}``
``bbox_tower.{3i}`` / ``{3i+1}``       ``bbox_tower_conv{i}`` / ``bbox_tower_norm{i}``
``cls_logits``, ``bbox_pred``,         same names (``kernel``, ``bias``)
``centerness``
``scales.{l}.scale``                   ``scale{l}.scale`` (shape ``()``)
=====================================  ===================================

With ``dcn`` the last conv of each tower is a
:class:`~atss_tf.model.deformable.ModulatedDeformConv2D` (official
``DFConv2d``): ``{cls,bbox}_tower.{3i}.offset.*`` -> ``..._conv{i}.offset.*``,
``.conv.{weight,bias}`` -> ``..._conv{i}.{kernel,bias}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

from atss_tf.model.deformable import ModulatedDeformConv2D
from atss_tf.model.layers import Scale, TorchConv2D

GROUP_NORM_EPSILON = 1e-5  # torch.nn.GroupNorm default


def _normal_001() -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.01)


def _conv(filters: int, name: str, bias: float = 0.0, dtype=None) -> TorchConv2D:
    return TorchConv2D(
        filters,
        3,
        use_bias=True,
        kernel_initializer=_normal_001(),
        bias_initializer=keras.initializers.Constant(bias),
        name=name,
        dtype=dtype,
    )


def _deformable_conv(filters: int, name: str, dtype=None) -> ModulatedDeformConv2D:
    # The official head initialises every nn.Conv2d, the offset conv among
    # them, normal(0, 0.01); the deformable kernel keeps its own uniform init.
    return ModulatedDeformConv2D(
        filters, use_bias=True, offset_initializer=_normal_001(), name=name, dtype=dtype
    )


@keras.saving.register_keras_serializable(package="atss_tf")
class ATSSHead(keras.layers.Layer):
    """Two conv towers and the three predictors, applied to every pyramid level.

    Each tower: ``num_convs`` x [3x3 conv (bias) -> GroupNorm -> ReLU]; the
    classification tower feeds ``cls_logits``, the box tower feeds ``bbox_pred``
    (times the level's learnable :class:`Scale`) and ``centerness``.

    Paper Table 1 switches: ``use_group_norm``, ``centerness`` (off: no
    centerness conv; the ``"centerness"`` output is a constant 0 logit, kept
    so every consumer sees one output structure; the losses and
    post-processing ignore it, reading ``model.head.centerness``) and
    ``learnable_scales`` (off: no :class:`Scale`, the box output is
    ``bbox_pred``'s).

    Args:
        num_classes: foreground classes C.
        num_anchors: anchors per location A.
        num_levels: pyramid levels (one :class:`Scale` each).
        num_convs: convs per tower.
        channels: tower width.
        use_group_norm: GroupNorm in the towers (off: conv -> ReLU).
        group_norm_groups: GroupNorm groups (contiguous channel groups, as
            PyTorch's NCHW grouping).
        prior_prob: initial foreground probability (cls bias
            ``-log((1 - p) / p)``).
        regression: ``"box"`` (deltas) or ``"point"`` (ReLU after the scale,
            regression bias initialised to 4).
        centerness: build the centerness branch.
        learnable_scales: multiply the box output by a learnable scalar per level.
        dcn: the last conv of each tower is a modulated deformable conv with
            bias (official ``USE_DCN_IN_TOWER``); needs ``num_convs >= 1``.

    Call: list of ``num_levels`` NHWC maps -> dict of per-level lists
    ``"cls_logits"`` ``[B, h, w, A*C]``, ``"box_regression"`` ``[B, h, w, A*4]``
    (scaled), ``"centerness"`` ``[B, h, w, A]``, in the compute dtype.
    """

    def __init__(
        self,
        num_classes: int,
        num_anchors: int = 1,
        num_levels: int = 5,
        num_convs: int = 4,
        channels: int = 256,
        use_group_norm: bool = True,
        group_norm_groups: int = 32,
        prior_prob: float = 0.01,
        regression: str = "box",
        centerness: bool = True,
        learnable_scales: bool = True,
        dcn: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if regression not in ("box", "point"):
            raise ValueError(f"regression must be 'box' or 'point', got {regression!r}")
        if regression == "point" and num_anchors != 1:
            raise ValueError("point regression needs one anchor per location")
        if dcn and num_convs < 1:
            raise ValueError("a deformable tower conv needs num_convs >= 1")
        self.num_classes = int(num_classes)
        self.num_anchors = int(num_anchors)
        self.num_levels = int(num_levels)
        self.num_convs = int(num_convs)
        self.channels = int(channels)
        self.use_group_norm = bool(use_group_norm)
        self.group_norm_groups = int(group_norm_groups)
        self.prior_prob = float(prior_prob)
        self.regression = regression
        self.use_centerness = bool(centerness)
        self.learnable_scales = bool(learnable_scales)
        self.dcn = bool(dcn)

        def tower(prefix: str) -> tuple[list, list]:
            convs, norms = [], []
            for i in range(self.num_convs):
                make = _deformable_conv if self.dcn and i == self.num_convs - 1 else _conv
                convs.append(make(self.channels, f"{prefix}_conv{i}", dtype=self.dtype_policy))
                if self.use_group_norm:
                    norms.append(
                        keras.layers.GroupNormalization(
                            groups=self.group_norm_groups,
                            epsilon=GROUP_NORM_EPSILON,
                            name=f"{prefix}_norm{i}",
                            dtype=self.dtype_policy,
                        )
                    )
            return convs, norms

        self.cls_tower_convs, self.cls_tower_norms = tower("cls_tower")
        self.bbox_tower_convs, self.bbox_tower_norms = tower("bbox_tower")
        a = self.num_anchors
        cls_bias = -math.log((1.0 - self.prior_prob) / self.prior_prob)
        dtype = self.dtype_policy
        self.cls_logits = _conv(a * self.num_classes, "cls_logits", bias=cls_bias, dtype=dtype)
        point_bias = 4.0 if regression == "point" else 0.0
        self.bbox_pred = _conv(a * 4, "bbox_pred", bias=point_bias, dtype=dtype)
        self.centerness = _conv(a, "centerness", dtype=dtype) if self.use_centerness else None
        self.scales = (
            [Scale(1.0, name=f"scale{level}", dtype=dtype) for level in range(self.num_levels)]
            if self.learnable_scales
            else []
        )

    def build(self, input_shape: Sequence) -> None:
        shape = tuple(input_shape[0])
        tower_shape = (None, None, None, self.channels)
        for convs, norms in (
            (self.cls_tower_convs, self.cls_tower_norms),
            (self.bbox_tower_convs, self.bbox_tower_norms),
        ):
            for i, conv in enumerate(convs):
                conv.build(shape if i == 0 else tower_shape)
            for norm in norms:
                norm.build(tower_shape)
        last = tower_shape if self.num_convs else shape
        for layer in (self.cls_logits, self.bbox_pred, self.centerness):
            if layer is not None:
                layer.build(last)
        for scale in self.scales:
            scale.build(())

    def _tower(self, x, convs, norms):
        for i, conv in enumerate(convs):
            x = conv(x)
            if norms:
                x = norms[i](x)
            x = ops.relu(x)
        return x

    def call(self, features: Sequence) -> dict:
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(features)}")
        outputs = {"cls_logits": [], "box_regression": [], "centerness": []}
        for level, x in enumerate(features):
            cls_x = self._tower(x, self.cls_tower_convs, self.cls_tower_norms)
            box_x = self._tower(x, self.bbox_tower_convs, self.bbox_tower_norms)
            box = self.bbox_pred(box_x)
            if self.scales:
                box = self.scales[level](box)
            if self.regression == "point":
                box = ops.relu(box)
            outputs["cls_logits"].append(self.cls_logits(cls_x))
            outputs["box_regression"].append(box)
            if self.centerness is not None:
                outputs["centerness"].append(self.centerness(box_x))
            else:
                outputs["centerness"].append(ops.zeros_like(box[..., : self.num_anchors]))
        return outputs

    def compute_output_shape(self, input_shape: Sequence) -> dict:
        a = self.num_anchors
        out = {"cls_logits": [], "box_regression": [], "centerness": []}
        for s in input_shape:
            b, h, w = s[0], s[1], s[2]
            out["cls_logits"].append((b, h, w, a * self.num_classes))
            out["box_regression"].append((b, h, w, a * 4))
            out["centerness"].append((b, h, w, a))
        return out

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "num_anchors": self.num_anchors,
                "num_levels": self.num_levels,
                "num_convs": self.num_convs,
                "channels": self.channels,
                "use_group_norm": self.use_group_norm,
                "group_norm_groups": self.group_norm_groups,
                "prior_prob": self.prior_prob,
                "regression": self.regression,
                "centerness": self.use_centerness,
                "learnable_scales": self.learnable_scales,
                "dcn": self.dcn,
            }
        )
        return config
