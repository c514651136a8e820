"""ResNet / ResNeXt backbone with frozen batch norm (ATSS_SPEC §6).

Layer names follow the official (maskrcnn-benchmark) state-dict keys, so the
checkpoint mapping reads as a rename:

=====================================================  ==============================
official key (prefix ``backbone.body.``)               Keras layer / weight
=====================================================  ==============================
``stem.conv1.weight``                                  ``stem_conv1.kernel``
``stem.bn1.{weight,bias,running_mean,running_var}``    ``stem_bn1.<same>``
``layer{s}.{i}.conv{j}.weight``                        ``layer{s}_{i}.conv{j}.kernel``
``layer{s}.{i}.bn{j}.*``                               ``layer{s}_{i}.bn{j}.*``
``layer{s}.{i}.downsample.0.weight``                   ``layer{s}_{i}.downsample_conv.kernel``
``layer{s}.{i}.downsample.1.*``                        ``layer{s}_{i}.downsample_bn.*``
=====================================================  ==============================

Stage ``layer1`` .. ``layer4`` produce C2 .. C5 (strides 4 .. 32). In a DCN
stage (``dcn_stages``) ``conv2`` is a
:class:`~atss_tf.model.deformable.ModulatedDeformConv2D`: official
``layer{s}.{i}.conv2.offset.*`` / ``conv2.conv.weight`` are
``layer{s}_{i}.conv2.offset.*`` / ``conv2.kernel``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import keras
from keras import ops

from atss_tf.model.deformable import ModulatedDeformConv2D
from atss_tf.model.layers import KAIMING_UNIFORM_A1, TorchConv2D, TorchMaxPool2D, make_norm

BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BOTTLENECK_DEPTHS = (50, 101)
STAGE_NAMES = ("c2", "c3", "c4", "c5")  # the outputs of layer1 .. layer4


def _scaled(channels: int, multiplier: float, divisor: int = 1) -> int:
    """``channels * multiplier`` rounded to a positive multiple of ``divisor``."""
    return max(divisor, int(round(channels * multiplier / divisor)) * divisor)


def _conv(
    filters, kernel_size, strides=1, groups=1, frozen=False, name=None, dtype=None
) -> TorchConv2D:
    return TorchConv2D(
        filters,
        kernel_size,
        strides=strides,
        groups=groups,
        use_bias=False,
        frozen=frozen,
        kernel_initializer=KAIMING_UNIFORM_A1,
        name=name,
        dtype=dtype,
    )


def _build_projection(block: keras.layers.Layer, channels: int, input_shape) -> None:
    """Create and build ``block``'s projection shortcut: ``downsample_conv``
    (1x1, the block's stride) and ``downsample_bn``."""
    block.downsample_conv = _conv(
        channels,
        1,
        strides=block.strides,
        frozen=block.frozen,
        name="downsample_conv",
        dtype=block.dtype_policy,
    )
    block.downsample_bn = make_norm(
        block.norm, "downsample_bn", block.frozen, dtype=block.dtype_policy
    )
    block.downsample_conv.build(input_shape)
    block.downsample_bn.build((None, None, None, channels))


@keras.saving.register_keras_serializable(package="atss_tf")
class BottleneckBlock(keras.layers.Layer):
    """ResNet bottleneck: 1x1 -> 3x3 (grouped) -> 1x1, frozen BN, identity/projection.

    Args:
        bottleneck_channels: width of the 1x1 and 3x3 convs (``groups * width``).
        out_channels: output channels (4x the stage's base width).
        strides: 1 or 2; applied on the first 1x1 (``stride_in_1x1``) or on the 3x3.
        groups: cardinality of the 3x3 conv (ResNeXt).
        stride_in_1x1: MSRA/caffe style (official R-50/101, keras.applications).
        frozen: conv weights non-trainable (frozen stage).
        deformable: ``conv2`` is a modulated deformable conv (same stride and
            groups, no bias; official ``DFConv2d``, offset conv kaiming
            uniform ``a=1``).

    Input ``[B, H, W, C_in]``; output ``[B, ceil(H / s), ceil(W / s), out_channels]``.
    A projection shortcut (``downsample_conv`` + ``downsample_bn``) exists when
    ``C_in != out_channels``, as in the official code.
    """

    def __init__(
        self,
        bottleneck_channels: int,
        out_channels: int,
        strides: int = 1,
        groups: int = 1,
        stride_in_1x1: bool = True,
        frozen: bool = False,
        norm: str = "frozen_bn",
        deformable: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.norm = norm
        self.deformable = bool(deformable)
        self.bottleneck_channels = int(bottleneck_channels)
        self.out_channels = int(out_channels)
        self.strides = int(strides)
        self.groups = int(groups)
        self.stride_in_1x1 = bool(stride_in_1x1)
        self.frozen = bool(frozen)
        s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
        width, f = self.bottleneck_channels, self.frozen
        self.conv1 = _conv(width, 1, strides=s1, frozen=f, name="conv1", dtype=self.dtype_policy)
        self.bn1 = make_norm(self.norm, "bn1", self.frozen, dtype=self.dtype_policy)
        conv2 = (
            ModulatedDeformConv2D if self.deformable else functools.partial(_conv, kernel_size=3)
        )
        self.conv2 = conv2(
            width, strides=s3, groups=self.groups, frozen=f, name="conv2", dtype=self.dtype_policy
        )
        self.bn2 = make_norm(self.norm, "bn2", self.frozen, dtype=self.dtype_policy)
        self.conv3 = _conv(self.out_channels, 1, frozen=f, name="conv3", dtype=self.dtype_policy)
        self.bn3 = make_norm(self.norm, "bn3", self.frozen, dtype=self.dtype_policy)
        self.downsample_conv = None
        self.downsample_bn = None

    def build(self, input_shape: Sequence[int | None]) -> None:
        in_channels = int(input_shape[-1])
        width = self.bottleneck_channels
        self.conv1.build(input_shape)
        self.bn1.build((None, None, None, width))
        self.conv2.build((None, None, None, width))
        self.bn2.build((None, None, None, width))
        self.conv3.build((None, None, None, width))
        self.bn3.build((None, None, None, self.out_channels))
        if in_channels != self.out_channels:
            _build_projection(self, self.out_channels, input_shape)

    def call(self, inputs):
        x = ops.relu(self.bn1(self.conv1(inputs)))
        x = ops.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        shortcut = inputs
        if self.downsample_conv is not None:
            shortcut = self.downsample_bn(self.downsample_conv(inputs))
        return ops.relu(x + shortcut)

    def compute_output_shape(self, input_shape):
        return self._output_shape(input_shape, self.out_channels, self.strides)

    @staticmethod
    def _output_shape(input_shape, channels, strides):
        def out(n):
            return None if n is None else -(-n // strides)

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), channels)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "bottleneck_channels": self.bottleneck_channels,
                "out_channels": self.out_channels,
                "strides": self.strides,
                "groups": self.groups,
                "stride_in_1x1": self.stride_in_1x1,
                "frozen": self.frozen,
                "norm": self.norm,
                "deformable": self.deformable,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="atss_tf")
class BasicBlock(keras.layers.Layer):
    """ResNet-18/34 block: 3x3 (stride) -> 3x3, frozen BN, identity/projection.

    Args:
        out_channels: output channels.
        strides: stride of the first 3x3.
        frozen: conv weights non-trainable.

    Input ``[B, H, W, C_in]``; output ``[B, ceil(H / s), ceil(W / s), out_channels]``.
    Projection shortcut when ``C_in != out_channels`` or ``strides != 1``
    (torchvision naming: ``downsample.0`` / ``downsample.1``).
    """

    def __init__(
        self,
        out_channels: int,
        strides: int = 1,
        frozen: bool = False,
        norm: str = "frozen_bn",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.norm = norm
        self.out_channels = int(out_channels)
        self.strides = int(strides)
        self.frozen = bool(frozen)
        c, f = self.out_channels, self.frozen
        self.conv1 = _conv(
            c, 3, strides=self.strides, frozen=f, name="conv1", dtype=self.dtype_policy
        )
        self.bn1 = make_norm(self.norm, "bn1", self.frozen, dtype=self.dtype_policy)
        self.conv2 = _conv(c, 3, frozen=f, name="conv2", dtype=self.dtype_policy)
        self.bn2 = make_norm(self.norm, "bn2", self.frozen, dtype=self.dtype_policy)
        self.downsample_conv = None
        self.downsample_bn = None

    def build(self, input_shape: Sequence[int | None]) -> None:
        c = self.out_channels
        self.conv1.build(input_shape)
        self.bn1.build((None, None, None, c))
        self.conv2.build((None, None, None, c))
        self.bn2.build((None, None, None, c))
        if int(input_shape[-1]) != c or self.strides != 1:
            _build_projection(self, c, input_shape)

    def call(self, inputs):
        x = ops.relu(self.bn1(self.conv1(inputs)))
        x = self.bn2(self.conv2(x))
        shortcut = inputs
        if self.downsample_conv is not None:
            shortcut = self.downsample_bn(self.downsample_conv(inputs))
        return ops.relu(x + shortcut)

    def compute_output_shape(self, input_shape):
        return BottleneckBlock._output_shape(input_shape, self.out_channels, self.strides)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "out_channels": self.out_channels,
                "strides": self.strides,
                "frozen": self.frozen,
                "norm": self.norm,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="atss_tf")
class ResNetBackbone(keras.layers.Layer):
    """ResNet-18/34/50/101 and ResNeXt, frozen BN, PyTorch padding.

    Stem: 7x7/2 conv (3 px symmetric padding) -> frozen BN -> ReLU -> 3x3/2
    max-pool (1 px ``-inf`` padding). Then four stages ``layer1..layer4``;
    stage ``s >= 2`` starts with a stride-2 block.

    Args:
        depth: 18, 34 (basic blocks), 50 or 101 (bottlenecks).
        stride_in_1x1: bottleneck stride on the first 1x1 (True) or on the 3x3.
        groups: ResNeXt cardinality (bottlenecks only).
        width_per_group: bottleneck width per group in stage 1 (64 for ResNet).
        width_multiplier: scale every channel count (tiny test models).
        freeze_at: 0 nothing frozen, 1 stem, 2 stem + ``layer1``, ... ; frozen
            means non-trainable conv weights (BN is always frozen).
        dcn_stages: stages (``"c2"`` .. ``"c5"``) whose every bottleneck has a
            deformable ``conv2`` (official ``STAGE_WITH_DCN``; 50/101 only).

    Call: ``[B, H, W, 3]`` normalised image -> dict ``{"c2": .., "c3": .., "c4":
    .., "c5": ..}`` of NHWC maps with strides 4, 8, 16, 32 (each
    ``ceil`` halving, PyTorch padding). Channels: :attr:`out_channels`.
    """

    def __init__(
        self,
        depth: int = 50,
        stride_in_1x1: bool = True,
        groups: int = 1,
        width_per_group: int = 64,
        width_multiplier: float = 1.0,
        freeze_at: int = 2,
        norm: str = "frozen_bn",
        dcn_stages: Sequence[str] = (),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.norm = norm
        self.dcn_stages = tuple(str(s) for s in dcn_stages)
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"ResNet depth {depth} is not supported: expected 18, 34, 50 or 101")
        bottleneck = depth in BOTTLENECK_DEPTHS
        if not bottleneck and (groups != 1 or width_per_group != 64):
            raise ValueError(
                f"ResNet-{depth} uses basic blocks: groups/width_per_group apply to 50/101 only"
            )
        unknown = [s for s in self.dcn_stages if s not in STAGE_NAMES]
        if unknown or (self.dcn_stages and not bottleneck):
            raise ValueError(
                f"dcn_stages={list(self.dcn_stages)}: expected stages of {STAGE_NAMES} "
                "of a bottleneck ResNet (depth 50 or 101)"
            )
        self.depth = int(depth)
        self.stride_in_1x1 = bool(stride_in_1x1)
        self.groups = int(groups)
        self.width_per_group = int(width_per_group)
        self.width_multiplier = float(width_multiplier)
        self.freeze_at = int(freeze_at)
        # Training option (train.recompute_backbone, set by build_training_model),
        # not part of the architecture or the saved config: the trainable stages
        # keep only their input for the backward pass and run again inside it
        # (keras.remat, tf.recompute_grad on TensorFlow).
        self.recompute_stages = False

        m = self.width_multiplier
        self.stem_channels = _scaled(64, m)
        self.stem_conv1 = TorchConv2D(
            self.stem_channels,
            7,
            strides=2,
            use_bias=False,
            frozen=self.freeze_at >= 1,
            kernel_initializer=KAIMING_UNIFORM_A1,
            name="stem_conv1",
            dtype=self.dtype_policy,
        )
        self.stem_bn1 = make_norm(
            self.norm, "stem_bn1", self.freeze_at >= 1, dtype=self.dtype_policy
        )
        self.stem_pool = TorchMaxPool2D(
            3, strides=2, padding=1, name="stem_pool", dtype=self.dtype_policy
        )

        self.stages: list[list[keras.layers.Layer]] = []
        out_channels = []
        for s, count in enumerate(BLOCKS_PER_STAGE[depth], start=1):
            frozen = self.freeze_at >= s + 1
            factor = 2 ** (s - 1)
            blocks = []
            for i in range(count):
                strides = 2 if (i == 0 and s > 1) else 1
                name = f"layer{s}_{i}"
                if bottleneck:
                    width = _scaled(self.groups * self.width_per_group * factor, m, self.groups)
                    out = _scaled(256 * factor, m)
                    block = BottleneckBlock(
                        width,
                        out,
                        strides=strides,
                        groups=self.groups,
                        stride_in_1x1=self.stride_in_1x1,
                        frozen=frozen,
                        norm=self.norm,
                        deformable=STAGE_NAMES[s - 1] in self.dcn_stages,
                        name=name,
                        dtype=self.dtype_policy,
                    )
                else:
                    out = _scaled(64 * factor, m)
                    block = BasicBlock(
                        out,
                        strides=strides,
                        frozen=frozen,
                        norm=self.norm,
                        name=name,
                        dtype=self.dtype_policy,
                    )
                blocks.append(block)
            self.stages.append(blocks)
            out_channels.append(out)
        self.out_channels = {f"c{s + 2}": c for s, c in enumerate(out_channels)}

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.stem_conv1.build(input_shape)
        shape = (None, None, None, self.stem_channels)
        self.stem_bn1.build(shape)
        for blocks in self.stages:
            for block in blocks:
                block.build(shape)
                shape = (None, None, None, block.out_channels)

    @staticmethod
    def _run_stage(blocks: Sequence[keras.layers.Layer], x):
        for block in blocks:
            x = block(x)
        return x

    def call(self, inputs) -> dict:
        x = ops.relu(self.stem_bn1(self.stem_conv1(inputs)))
        x = self.stem_pool(x)
        features = {}
        for s, blocks in enumerate(self.stages):
            run = functools.partial(self._run_stage, blocks)
            # Stage s + 1 has trainable weights when freeze_at <= s + 1; a frozen
            # stage keeps no activations for the backward pass anyway.
            if self.recompute_stages and self.freeze_at <= s + 1:
                run = keras.remat(run)
            x = run(x)
            features[f"c{s + 2}"] = x
        return features

    def compute_output_shape(self, input_shape):
        out = {}
        for s, (name, c) in enumerate(self.out_channels.items()):
            stride = 4 * 2**s

            def size(n, stride=stride):
                return None if n is None else -(-n // stride)

            out[name] = (input_shape[0], size(input_shape[1]), size(input_shape[2]), c)
        return out

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "depth": self.depth,
                "stride_in_1x1": self.stride_in_1x1,
                "groups": self.groups,
                "width_per_group": self.width_per_group,
                "width_multiplier": self.width_multiplier,
                "freeze_at": self.freeze_at,
                "norm": self.norm,
                "dcn_stages": list(self.dcn_stages),
            }
        )
        return config
