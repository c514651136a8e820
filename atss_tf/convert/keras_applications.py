"""ImageNet initialisation of the backbone from keras.applications ResNet50/101.

``model.backbone.weights: imagenet`` builds
``keras.applications.ResNet50/101(include_top=False, weights="imagenet")``
(Keras downloads the file on first use) and copies it into
:class:`~atss_tf.model.resnet.ResNetBackbone`. Both are the MSRA/caffe
ResNet v1 with the stride on the first 1x1 and symmetric zero padding for the
stem conv and max-pool (``ZeroPadding2D`` + ``valid``; the max-pool follows a
ReLU, so zero and ``-inf`` padding agree), so the features are the same up to
float rounding.

Two differences are folded into the frozen batch norm:

* keras.applications convs have a bias ``c``; ours do not:
  ``BN(conv(x) + c) = BN'(conv(x))`` with ``running_mean' = moving_mean - c``.
* keras.applications BN has ``epsilon = 1.001e-5``; our frozen BN has none
  (official ``FrozenBatchNorm2d``): ``running_var' = moving_variance + epsilon``.

These weights expect caffe-mode input: BGR, mean (103.939, 116.779, 123.68),
std 1 - set ``model.pixel_mean`` accordingly (the official detector's mean
(102.9801, 115.9465, 122.7717) differs by about one grey level).

Name mapping (keras.applications -> ours):

===================================  ==========================================
``conv1_conv``, ``conv1_bn``         ``stem_conv1``, ``stem_bn1``
``conv{s+1}_block{i+1}_{j}_conv``    ``layer{s}_{i}.conv{j}`` (j = 1, 2, 3)
``conv{s+1}_block{i+1}_{j}_bn``      ``layer{s}_{i}.bn{j}``
``conv{s+1}_block{i+1}_0_conv/_bn``  ``layer{s}_{i}.downsample_conv/_bn``
===================================  ==========================================
"""

from __future__ import annotations

import keras
import numpy as np

from atss_tf.model.layers import FrozenBatchNorm, TorchConv2D
from atss_tf.model.resnet import ResNetBackbone

IMAGENET_PIXEL_MEAN_BGR = (103.939, 116.779, 123.68)
_APPLICATIONS = {50: "ResNet50", 101: "ResNet101"}


def _check_compatible(backbone: ResNetBackbone) -> None:
    problems = []
    if backbone.depth not in _APPLICATIONS:
        problems.append(f"depth={backbone.depth} (keras.applications has 50 and 101)")
    if backbone.groups != 1 or backbone.width_per_group != 64:
        problems.append(f"groups={backbone.groups}, width_per_group={backbone.width_per_group}")
    if backbone.width_multiplier != 1.0:
        problems.append(f"width_multiplier={backbone.width_multiplier}")
    if not backbone.stride_in_1x1:
        problems.append("stride_in_1x1=False (keras.applications strides the first 1x1)")
    if problems:
        raise ValueError(
            "ImageNet weights need a plain ResNet-50/101 backbone; got " + ", ".join(problems)
        )


def keras_applications_resnet(depth: int, weights: str | None = "imagenet") -> keras.Model:
    """``keras.applications.ResNet{depth}(include_top=False)`` for any input size."""
    if depth not in _APPLICATIONS:
        raise ValueError(f"no keras.applications ResNet-{depth}: expected 50 or 101")
    factory = getattr(keras.applications, _APPLICATIONS[depth])
    return factory(include_top=False, weights=weights, input_shape=(None, None, 3))


def _copy_conv_bn(
    source: keras.Model, conv_name: str, bn_name: str, conv: TorchConv2D, bn: FrozenBatchNorm
) -> int:
    src_conv = source.get_layer(conv_name)
    src_bn = source.get_layer(bn_name)
    kernel = np.asarray(src_conv.kernel)
    conv_bias = np.asarray(src_conv.bias) if src_conv.use_bias else 0.0
    if kernel.shape != tuple(conv.kernel.shape):
        raise ValueError(
            f"{conv_name} kernel {kernel.shape} != {conv.name} {tuple(conv.kernel.shape)}"
        )
    conv.kernel.assign(kernel)
    bn.weight.assign(np.asarray(src_bn.gamma))
    bn.bias.assign(np.asarray(src_bn.beta))
    bn.running_mean.assign(np.asarray(src_bn.moving_mean) - conv_bias)
    bn.running_var.assign(np.asarray(src_bn.moving_variance) + src_bn.epsilon)
    return 1


def copy_keras_resnet_weights(source: keras.Model, backbone: ResNetBackbone) -> int:
    """Copy a keras.applications ResNet v1 (50/101) into a built ``backbone``.

    Args:
        source: ``keras.applications.ResNet50/101`` (any ``weights``).
        backbone: a built :class:`ResNetBackbone` of the same depth.

    Returns:
        Number of conv + BN pairs copied.

    Raises:
        ValueError: incompatible backbone settings or shapes.
    """
    _check_compatible(backbone)
    copied = _copy_conv_bn(source, "conv1_conv", "conv1_bn", backbone.stem_conv1, backbone.stem_bn1)
    for s, blocks in enumerate(backbone.stages, start=1):
        for i, block in enumerate(blocks):
            prefix = f"conv{s + 1}_block{i + 1}"
            for j in (1, 2, 3):
                copied += _copy_conv_bn(
                    source,
                    f"{prefix}_{j}_conv",
                    f"{prefix}_{j}_bn",
                    getattr(block, f"conv{j}"),
                    getattr(block, f"bn{j}"),
                )
            if block.downsample_conv is not None:
                copied += _copy_conv_bn(
                    source,
                    f"{prefix}_0_conv",
                    f"{prefix}_0_bn",
                    block.downsample_conv,
                    block.downsample_bn,
                )
    return copied


def load_imagenet_backbone(backbone: ResNetBackbone, weights: str | None = "imagenet") -> int:
    """Initialise a built ``backbone`` from keras.applications ImageNet weights.

    Args:
        backbone: built ResNet-50/101 backbone (groups 1, ``stride_in_1x1``).
        weights: ``"imagenet"`` or a path to a keras.applications weights file.

    Returns:
        Number of conv + BN pairs copied.
    """
    _check_compatible(backbone)
    source = keras_applications_resnet(backbone.depth, weights)
    return copy_keras_resnet_weights(source, backbone)
