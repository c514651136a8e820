"""Feature pyramid P3..P7 on ResNet C3..C5 (ATSS_SPEC §6).

Official (maskrcnn-benchmark ``FPN`` + ``LastLevelP6P7``) names, prefix
``backbone.fpn.``:

=====================================  ==================  =====================
official                               Keras layer         computes
=====================================  ==================  =====================
``fpn_inner2`` / ``3`` / ``4``         same names          1x1 laterals on C3/C4/C5
``fpn_layer2`` / ``3`` / ``4``         same names          3x3 outputs P3/P4/P5
``top_blocks.p6``                      ``p6``              3x3/2 conv on P5
``top_blocks.p7``                      ``p7``              3x3/2 conv on ReLU(P6)
=====================================  ==================  =====================
"""

from __future__ import annotations

import keras
from keras import ops

from atss_tf.model.layers import KAIMING_UNIFORM_A1, TorchConv2D

LEVELS = ("p3", "p4", "p5", "p6", "p7")


def _conv(
    filters: int, kernel_size: int, strides: int = 1, name: str | None = None, dtype=None
) -> TorchConv2D:
    return TorchConv2D(
        filters,
        kernel_size,
        strides=strides,
        use_bias=True,
        kernel_initializer=KAIMING_UNIFORM_A1,
        bias_initializer="zeros",
        name=name,
        dtype=dtype,
    )


def upsample_to(x, like):
    """Nearest-neighbour x2 upsampling of ``x`` cropped to the spatial size of ``like``.

    With ``ceil`` halving between levels, ``2 * size(x) >= size(like)`` and the
    crop keeps source index ``i // 2`` for target ``i`` - PyTorch's ``nearest``
    for an exact factor 2. Both NHWC.
    """
    up = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)
    shape = ops.shape(like)
    return up[:, : shape[1], : shape[2], :]


@keras.saving.register_keras_serializable(package="atss_tf")
class FeaturePyramid(keras.layers.Layer):
    """FPN with P6/P7 from P5 (the ATSS / RetinaNet-P5 variant).

    Args:
        channels: channels of every pyramid level.
        p7_from_relu: ``P7 = conv(ReLU(P6))`` (official); ``False``: ``conv(P6)``
            (mmdetection).

    Call: dict with ``"c3"``, ``"c4"``, ``"c5"`` NHWC maps (other keys
    ignored) -> dict ``{"p3": .., ..., "p7": ..}``, each ``[B, h_l, w_l,
    channels]`` with P6, P7 of size ``ceil(P5 / 2)``, ``ceil(P6 / 2)``.
    """

    def __init__(self, channels: int = 256, p7_from_relu: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.p7_from_relu = bool(p7_from_relu)
        c = self.channels
        self.fpn_inner2 = _conv(c, 1, name="fpn_inner2", dtype=self.dtype_policy)
        self.fpn_inner3 = _conv(c, 1, name="fpn_inner3", dtype=self.dtype_policy)
        self.fpn_inner4 = _conv(c, 1, name="fpn_inner4", dtype=self.dtype_policy)
        self.fpn_layer2 = _conv(c, 3, name="fpn_layer2", dtype=self.dtype_policy)
        self.fpn_layer3 = _conv(c, 3, name="fpn_layer3", dtype=self.dtype_policy)
        self.fpn_layer4 = _conv(c, 3, name="fpn_layer4", dtype=self.dtype_policy)
        self.p6 = _conv(c, 3, strides=2, name="p6", dtype=self.dtype_policy)
        self.p7 = _conv(c, 3, strides=2, name="p7", dtype=self.dtype_policy)

    def build(self, input_shape: dict) -> None:
        out = (None, None, None, self.channels)
        self.fpn_inner2.build(input_shape["c3"])
        self.fpn_inner3.build(input_shape["c4"])
        self.fpn_inner4.build(input_shape["c5"])
        for layer in (self.fpn_layer2, self.fpn_layer3, self.fpn_layer4, self.p6, self.p7):
            layer.build(out)

    def call(self, inputs: dict) -> dict:
        inner5 = self.fpn_inner4(inputs["c5"])
        inner4 = self.fpn_inner3(inputs["c4"])
        inner4 = inner4 + upsample_to(inner5, inner4)
        inner3 = self.fpn_inner2(inputs["c3"])
        inner3 = inner3 + upsample_to(inner4, inner3)
        p5 = self.fpn_layer4(inner5)
        p6 = self.p6(p5)
        p7 = self.p7(ops.relu(p6) if self.p7_from_relu else p6)
        return {
            "p3": self.fpn_layer2(inner3),
            "p4": self.fpn_layer3(inner4),
            "p5": p5,
            "p6": p6,
            "p7": p7,
        }

    def compute_output_shape(self, input_shape: dict) -> dict:
        def half(n):
            return None if n is None else -(-n // 2)

        shapes = {}
        for p, c in (("p3", "c3"), ("p4", "c4"), ("p5", "c5")):
            s = input_shape[c]
            shapes[p] = (s[0], s[1], s[2], self.channels)
        for p, prev in (("p6", "p5"), ("p7", "p6")):
            s = shapes[prev]
            shapes[p] = (s[0], half(s[1]), half(s[2]), self.channels)
        return shapes

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"channels": self.channels, "p7_from_relu": self.p7_from_relu})
        return config
