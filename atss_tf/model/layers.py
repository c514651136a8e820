"""Small building blocks shared by the backbone, FPN and head.

Every layer here reproduces a PyTorch op exactly (padding, frozen batch norm
without epsilon), so weights converted from the official PyTorch checkpoints
give the same numbers. All layers take and return NHWC tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import keras
import tensorflow as tf
from keras import ops

KAIMING_UNIFORM_A1 = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0, "mode": "fan_in", "distribution": "uniform"},
}
"""PyTorch ``kaiming_uniform_(a=1)``: bound ``sqrt(3 / fan_in)``."""


def build_conv_weights(layer: keras.layers.Layer, input_shape, kernel_size: int) -> None:
    """Add ``layer.kernel`` ``[k, k, C_in / groups, filters]`` and ``layer.bias``
    ``[filters]`` (None without ``use_bias``) from the layer's ``filters``,
    ``groups``, initialisers and ``frozen`` (not trainable when set).

    Raises:
        ValueError: the input channels are not a multiple of ``groups``.
    """
    in_channels = int(input_shape[-1])
    if in_channels % layer.groups:
        raise ValueError(
            f"{layer.name}: input channels {in_channels} not divisible by groups={layer.groups}"
        )
    layer.kernel = layer.add_weight(
        name="kernel",
        shape=(kernel_size, kernel_size, in_channels // layer.groups, layer.filters),
        initializer=layer.kernel_initializer,
        trainable=not layer.frozen,
    )
    layer.bias = None
    if layer.use_bias:
        layer.bias = layer.add_weight(
            name="bias",
            shape=(layer.filters,),
            initializer=layer.bias_initializer,
            trainable=not layer.frozen,
        )


@functools.cache
def _grouped_gradient_by_group() -> bool:
    """Whether grouped convolutions need :func:`grouped_conv2d`'s own gradient.

    TensorFlow's CPU kernels of ``Conv2DBackpropInput`` / ``Conv2DBackpropFilter``
    reject grouped convolutions ("Gradients for grouped convolutions are not
    supported on CPU"); its GPU kernels and XLA (TPU, ``jit_compile``) have the
    native gradient. Decided once, on first use (not at import, so tests can
    still configure logical devices): True when no GPU and no TPU is visible.
    ``jit_compile`` steps on such a machine take the per-group gradient too
    (a trace cannot tell whether XLA will compile it); it lowers to XLA and
    gives the same numbers.
    """
    accelerators = tf.config.list_physical_devices("GPU") + tf.config.list_physical_devices("TPU")
    return not accelerators


def grouped_conv2d(x: tf.Tensor, kernel: tf.Tensor, strides: int, padding: str) -> tf.Tensor:
    """Grouped 2D convolution ``tf.nn.convolution(x, kernel, strides, padding)``
    whose gradient also runs on CPU.

    The forward pass is TensorFlow's native grouped convolution (one op, groups
    = ``C_in / kernel.shape[2]``). Where TF's own gradient is missing (CPU
    kernels, see :func:`_grouped_gradient_by_group`) the backward pass splits
    ``x``, ``kernel`` and the output gradient by group, runs the plain
    (ungrouped) ``Conv2DBackpropInput`` / ``Conv2DBackpropFilter`` per group and
    concatenates: the gradient of the split-conv-concat formulation. Those ops
    also lower to XLA, so ``jit_compile`` steps keep compiling.

    Args:
        x: ``[B, H, W, C_in]`` input (already padded for ``"VALID"``).
        kernel: ``[k, k, C_in / groups, F]`` (HWIO) kernel, ``x``'s dtype;
            ``F`` divisible by ``groups``.
        strides: square stride.
        padding: ``"SAME"`` or ``"VALID"``.

    Returns:
        ``[B, H', W', F]`` in ``x``'s dtype.
    """
    if not _grouped_gradient_by_group():
        return tf.nn.convolution(x, kernel, strides=strides, padding=padding)
    return _grouped_conv2d_split_gradient(x, kernel, strides, padding)


def _grouped_conv2d_split_gradient(
    x: tf.Tensor, kernel: tf.Tensor, strides: int, padding: str
) -> tf.Tensor:
    """:func:`grouped_conv2d` with the per-group gradient (see there)."""
    # A tensor, not a variable: tf.custom_gradient would otherwise see a variable
    # read inside ``conv`` and want its gradient through ``variables``.
    kernel = tf.convert_to_tensor(kernel)
    groups = int(x.shape[-1]) // int(kernel.shape[2])
    stride4 = [1, strides, strides, 1]

    @tf.custom_gradient
    def conv(x, kernel):
        y = tf.nn.convolution(x, kernel, strides=strides, padding=padding)

        def grad(dy):
            xs = tf.split(x, groups, axis=-1)
            ks = tf.split(kernel, groups, axis=-1)
            dys = tf.split(dy, groups, axis=-1)
            dx = [
                tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(xg),
                    filter=kg,
                    out_backprop=dyg,
                    strides=stride4,
                    padding=padding,
                )
                for xg, kg, dyg in zip(xs, ks, dys)
            ]
            dk = [
                tf.raw_ops.Conv2DBackpropFilter(
                    input=xg,
                    filter_sizes=tf.shape(kg),
                    out_backprop=dyg,
                    strides=stride4,
                    padding=padding,
                )
                for xg, kg, dyg in zip(xs, ks, dys)
            ]
            return tf.concat(dx, axis=-1), tf.concat(dk, axis=-1)

        return y, grad

    return conv(x, kernel)


@keras.saving.register_keras_serializable(package="atss_tf")
class TorchConv2D(keras.layers.Layer):
    """2D convolution with PyTorch's symmetric zero padding.

    TF ``"same"`` padding puts the extra row/column of a stride-2 convolution at
    the bottom/right; PyTorch pads ``padding`` pixels on every side. Both agree
    for stride 1 and odd kernels (then ``"same"`` is used); otherwise the input
    is padded explicitly and convolved with ``"valid"``.

    Args:
        filters: output channels.
        kernel_size: square kernel side.
        strides: square stride.
        padding: pixels of zeros on each side; ``None`` means
            ``(kernel_size - 1) // 2`` (PyTorch's usual ``k // 2`` for odd k).
        groups: grouped convolution (ResNeXt); input channels must divide.
        use_bias: add a bias.
        frozen: create the weights non-trainable (the backbone's frozen stages).
            Kept on the variables, so ``model.trainable = True`` cannot thaw them.
        kernel_initializer: initializer of the ``[k, k, in / groups, filters]``
            (HWIO) kernel.
        bias_initializer: initializer of the ``[filters]`` bias.

    Input shape: ``[B, H, W, C]``. Output shape: ``[B, H', W', filters]`` with
    ``H' = (H + 2 * padding - kernel_size) // strides + 1``.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        strides: int = 1,
        padding: int | None = None,
        groups: int = 1,
        use_bias: bool = True,
        frozen: bool = False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.padding = (self.kernel_size - 1) // 2 if padding is None else int(padding)
        self.groups = int(groups)
        self.use_bias = bool(use_bias)
        self.frozen = bool(frozen)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        if self.filters % self.groups:
            raise ValueError(f"filters={self.filters} is not divisible by groups={self.groups}")

    def build(self, input_shape: Sequence[int | None]) -> None:
        build_conv_weights(self, input_shape, self.kernel_size)

    def _same_is_symmetric(self) -> bool:
        return (
            self.strides == 1
            and self.kernel_size % 2 == 1
            and 2 * self.padding == self.kernel_size - 1
        )

    def call(self, inputs):
        x = inputs
        if self._same_is_symmetric():
            padding = "same"
        else:
            if self.padding:
                p = self.padding
                x = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
            padding = "valid"
        if self.groups > 1 and keras.backend.backend() == "tensorflow":
            # keras.ops.conv runs grouped convs through a fresh jit_compile'd
            # tf.function on every eager call (a workaround for old TF CPU
            # kernels): 2x slower eagerly. TF's native grouped conv runs
            # forward everywhere; grouped_conv2d gives it a gradient on CPU,
            # where TF's kernels have none.
            kernel = ops.convert_to_tensor(self.kernel, dtype=x.dtype)
            x = grouped_conv2d(x, kernel, self.strides, padding.upper())
        else:
            x = ops.conv(x, self.kernel, strides=self.strides, padding=padding)
        if self.bias is not None:
            x = x + self.bias
        return x

    def compute_output_shape(self, input_shape):
        def out(n):
            if n is None:
                return None
            return (n + 2 * self.padding - self.kernel_size) // self.strides + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.filters)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "groups": self.groups,
                "use_bias": self.use_bias,
                "frozen": self.frozen,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="atss_tf")
class TorchMaxPool2D(keras.layers.Layer):
    """Max-pooling with PyTorch's symmetric padding (padded cells never win).

    Args:
        pool_size: square window.
        strides: square stride.
        padding: pixels of ``-inf`` on each side.

    Input shape ``[B, H, W, C]``; output ``[B, (H + 2p - k) // s + 1, ..., C]``.
    """

    def __init__(self, pool_size: int = 3, strides: int = 2, padding: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        self.strides = int(strides)
        self.padding = int(padding)

    def call(self, inputs):
        x = inputs
        if self.padding:
            p = self.padding
            x = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=float("-inf"))
        return ops.max_pool(x, pool_size=self.pool_size, strides=self.strides, padding="valid")

    def compute_output_shape(self, input_shape):
        def out(n):
            return (
                None if n is None else (n + 2 * self.padding - self.pool_size) // self.strides + 1
            )

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), input_shape[3])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {"pool_size": self.pool_size, "strides": self.strides, "padding": self.padding}
        )
        return config


@keras.saving.register_keras_serializable(package="atss_tf")
class FrozenBatchNorm(keras.layers.Layer):
    """Batch norm with fixed statistics: ``y = x * scale + shift`` per channel.

    ``scale = weight / sqrt(running_var)``, ``shift = bias - running_mean * scale``
    with **no epsilon**, as the official ``FrozenBatchNorm2d``
    (``weight * running_var.rsqrt()``). Checkpoints that trained with a BN
    epsilon (keras.applications: 1.001e-5) fold it into ``running_var``.

    The four tensors are non-trainable weights named as in PyTorch
    (``weight``, ``bias``, ``running_mean``, ``running_var``), so converting is
    a copy; the layer behaves the same in training and inference.

    Input/output shape: ``[..., C]``.
    """

    def build(self, input_shape: Sequence[int | None]) -> None:
        c = (int(input_shape[-1]),)
        init = {"weight": "ones", "bias": "zeros", "running_mean": "zeros", "running_var": "ones"}
        for name, initializer in init.items():
            # autocast=False: statistics stay float32 under mixed precision.
            var = self.add_weight(
                name=name, shape=c, initializer=initializer, trainable=False, autocast=False
            )
            setattr(self, name, var)

    def call(self, inputs):
        scale = self.weight * ops.rsqrt(self.running_var)
        shift = self.bias - self.running_mean * scale
        return inputs * ops.cast(scale, inputs.dtype) + ops.cast(shift, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="atss_tf")
class Scale(keras.layers.Layer):
    """Multiply by one learnable scalar (the per-level box-regression scale).

    Args:
        init_value: initial value of the ``scale`` weight (shape ``()``).
    """

    def __init__(self, init_value: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)

    def build(self, input_shape) -> None:
        self.scale = self.add_weight(
            name="scale", shape=(), initializer=keras.initializers.Constant(self.init_value)
        )

    def call(self, inputs):
        return inputs * ops.cast(self.scale, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"init_value": self.init_value})
        return config


@keras.saving.register_keras_serializable(package="atss_tf")
class ImageNormalization(keras.layers.Layer):
    """RGB 0-255 images -> the network's input: ``(maybe_bgr(x) - mean) / std``.

    Runs in float32 whatever the global dtype policy (a float16 ``x - mean``
    would lose about 0.06 at 255); the next layer casts to its compute dtype.

    Args:
        mean: per-channel mean, in the channel order the network expects.
        std: per-channel std, same order.
        bgr: flip RGB input to BGR before normalising.

    Input: ``[B, H, W, 3]`` RGB, any real dtype. Output: ``[B, H, W, 3]`` float32.
    """

    def __init__(
        self,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        bgr: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.bgr = bool(bgr)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.bgr:
            x = ops.flip(x, axis=-1)
        mean = ops.convert_to_tensor(self.mean, dtype="float32")
        std = ops.convert_to_tensor(self.std, dtype="float32")
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"mean": list(self.mean), "std": list(self.std), "bgr": self.bgr})
        return config


NORMS = ("frozen_bn", "batch_norm")


def make_norm(norm: str, name: str, frozen: bool = False, dtype=None) -> keras.layers.Layer:
    """The backbone's normalisation layer.

    ``"frozen_bn"``: :class:`FrozenBatchNorm` (pretrained backbones, official).
    ``"batch_norm"``: a trainable ``keras.layers.BatchNormalization`` with
    PyTorch's defaults (eps 1e-5, momentum 0.1 there = 0.9 here), for training a
    backbone from scratch (the synthetic demo); non-trainable in frozen stages.
    """
    if norm == "frozen_bn":
        return FrozenBatchNorm(name=name, dtype=dtype)
    if norm == "batch_norm":
        layer = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name, dtype=dtype)
        layer.trainable = not frozen
        return layer
    raise ValueError(f"unknown backbone norm {norm!r}: expected one of {NORMS}")
