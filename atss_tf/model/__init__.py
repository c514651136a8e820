"""The ATSS network: ResNet backbone, FPN, head and the ``keras.Model`` that joins them."""

from atss_tf.model.deformable import ModulatedDeformConv2D
from atss_tf.model.detector import PYRAMID_STRIDES, ATSSDetector, build_detector
from atss_tf.model.fpn import LEVELS, FeaturePyramid
from atss_tf.model.head import ATSSHead
from atss_tf.model.layers import (
    FrozenBatchNorm,
    ImageNormalization,
    Scale,
    TorchConv2D,
    TorchMaxPool2D,
)
from atss_tf.model.resnet import BasicBlock, BottleneckBlock, ResNetBackbone

__all__ = [
    "LEVELS",
    "PYRAMID_STRIDES",
    "ATSSDetector",
    "ATSSHead",
    "BasicBlock",
    "BottleneckBlock",
    "FeaturePyramid",
    "FrozenBatchNorm",
    "ImageNormalization",
    "ModulatedDeformConv2D",
    "ResNetBackbone",
    "Scale",
    "TorchConv2D",
    "TorchMaxPool2D",
    "build_detector",
]
