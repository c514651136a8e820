"""Modulated deformable convolution (DCNv2), the official ``DFConv2d`` (ATSS_SPEC §11).

A 3x3 convolution whose nine taps sample the input at learned fractional
positions, each sample scaled by a learned mask. What it computes is the
official CUDA kernel's (``modulated_deformable_im2col_gpu_kernel``, then a
grouped matrix product): for output position ``(y, x)`` and tap ``k = 3i + j``
(``i`` the kernel row, ``j`` its column), with ``dy_k, dx_k`` the tap's offsets
and ``m_k`` its mask in ``[0, 1]``:

* the sampling position is ``p_y = y * s - 1 + i + dy_k``,
  ``p_x = x * s - 1 + j + dx_k`` (stride ``s``, padding 1, dilation 1);
* the sample is the bilinear interpolation of the input at ``(p_y, p_x)``; a
  position with ``p_y <= -1``, ``p_y >= H``, ``p_x <= -1`` or ``p_x >= W``
  gives 0, and each of the four neighbouring pixels outside the map counts 0;
* ``out[f] = sum_k sum_c kernel[i, j, c, f] * m_k * sample_k[c]`` over the
  input channels ``c`` of ``f``'s group, plus the bias.

Zero offsets and unit masks make it a plain 3x3 convolution with PyTorch's
symmetric padding (:class:`~atss_tf.model.layers.TorchConv2D`).

How: the input is zero-padded by one pixel on every side and flattened to
``[B, (H + 2) * (W + 2), C]``; a position inside ``(-1, H) x (-1, W)`` then
has all four neighbours inside the padded map (outside ones read a padded
zero), and a position outside it gets bilinear weights 0. Each tap gathers its
four corners (``[B, N, C]`` each, ``N = Ho * Wo``), weights them into its
samples and multiplies those by its slice of the kernel; a ``tf.while_loop``
sums the nine taps, so one tap's samples exist at a time instead of the
``[B, N, 9 * C]`` im2col matrix of a literal transcription. The gradient
(``tf.custom_gradient``) loops over the taps again and recomputes each one's
corners, as the official CUDA backward recomputes its columns, instead of
keeping all nine taps' corners and samples (``45 * B * N * C`` values at
stride 1). Plain TensorFlow ops, static shapes where the input's are,
XLA-compilable.

Measured (``benchmarks/deformable.py``, CPU, float32, batch 2, R-50 c4/c5 and
head P3 of an 800 x 1333 image): in graph mode or with XLA the forward pass
takes 1.1-1.8x a plain 3x3 conv and peaks at 5-7x its input (im2col: 45-75x);
forward + backward take 1.2-2.6x the plain conv's and peak at 15-36x the input
(im2col: 85-170x, the plain conv 6-27x). Eagerly it is 3-5x the plain conv.

Precision: sampling positions and bilinear weights are computed in float32
(float64 for float64 inputs) whatever the compute dtype; the gathers, weights
and products run in the compute dtype and the nine taps are summed in float32
for 16-bit compute dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf
from keras import ops

from atss_tf.model.layers import KAIMING_UNIFORM_A1, TorchConv2D, build_conv_weights

TAPS = 9  # 3 x 3 kernel
OFFSET_CHANNELS = 2 * TAPS  # (dy, dx) per tap: channels 2k, 2k + 1
OFFSET_CONV_CHANNELS = 3 * TAPS  # offsets, then one mask logit per tap

DEFORM_KERNEL_UNIFORM = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_in", "distribution": "uniform"},
}
"""The official ``ModulatedDeformConv.reset_parameters``: uniform in
``+-1 / sqrt(fan_in)`` (fan in ``9 * C / groups`` here, ``9 * C`` there)."""


def _dim(x: tf.Tensor, axis: int):
    """A static dimension of ``x`` if known, else the dynamic one."""
    static = x.shape[axis]
    return int(static) if static is not None else tf.shape(x)[axis]


def deform_output_size(size, strides: int):
    """Output side of a 3x3 conv with padding 1: ``(size - 1) // strides + 1``."""
    return (size - 1) // strides + 1


def bilinear_taps(
    offsets: tf.Tensor, mask: tf.Tensor, input_size: tuple, strides: int, dtype=tf.float32
) -> tuple[tf.Tensor, tf.Tensor]:
    """Where each tap samples: corner indices and weights into the padded, flattened map.

    Args:
        offsets: ``[B, Ho, Wo, 18]``, channel ``2k`` the vertical and ``2k + 1``
            the horizontal offset of tap ``k`` (input pixels).
        mask: ``[B, Ho, Wo, 9]``, the taps' modulation in ``[0, 1]``.
        input_size: ``(H, W)`` of the sampled map (ints or scalar tensors).
        strides: the convolution's stride.
        dtype: float dtype of the positions and weights (float32 or float64).

    Returns:
        ``indices`` int32 ``[B, Ho * Wo, 9, 4]`` into the map zero-padded by one
        pixel and flattened row-major to ``[(H + 2) * (W + 2)]``, corners in the
        order top-left, top-right, bottom-left, bottom-right; ``weights``
        ``[B, Ho * Wo, 9, 4]`` in ``dtype``: bilinear weight times mask, 0 for a
        position outside ``(-1, H) x (-1, W)``.
    """
    height, width = input_size
    out_h, out_w = _dim(offsets, 1), _dim(offsets, 2)
    off = tf.reshape(tf.cast(offsets, dtype), [-1, out_h, out_w, TAPS, 2])
    taps = tf.range(TAPS)
    tap_row, tap_col = tf.cast(taps // 3 - 1, dtype), tf.cast(taps % 3 - 1, dtype)
    rows = tf.cast(tf.range(out_h) * strides, dtype)[:, None, None] + tap_row  # [Ho, 1, 9]
    cols = tf.cast(tf.range(out_w) * strides, dtype)[None, :, None] + tap_col  # [1, Wo, 9]
    p_y = rows + off[..., 0]  # [B, Ho, Wo, 9]
    p_x = cols + off[..., 1]
    h, w = tf.cast(height, dtype), tf.cast(width, dtype)
    inside = (p_y > -1) & (p_y < h) & (p_x > -1) & (p_x < w)
    y0, x0 = tf.floor(p_y), tf.floor(p_x)
    ly, lx = p_y - y0, p_x - x0
    hy, hx = 1 - ly, 1 - lx
    m = tf.cast(mask, dtype) * tf.cast(inside, dtype)
    weights = tf.stack([hy * hx, hy * lx, ly * hx, ly * lx], axis=-1) * m[..., None]
    # Padded row/column of the top-left corner; clipped (weight 0) when outside.
    row = tf.cast(tf.clip_by_value(y0, -1, h - 1), tf.int32) + 1
    col = tf.cast(tf.clip_by_value(x0, -1, w - 1), tf.int32) + 1
    padded_w = tf.cast(width, tf.int32) + 2
    top_left = row * padded_w + col
    indices = tf.stack(
        [top_left, top_left + 1, top_left + padded_w, top_left + padded_w + 1], axis=-1
    )
    n = out_h * out_w
    return tf.reshape(indices, [-1, n, TAPS, 4]), tf.reshape(weights, [-1, n, TAPS, 4])


def _tap_product(samples: tf.Tensor, kernel: tf.Tensor, groups: int) -> tf.Tensor:
    """``[B, N, C]`` samples times one tap's ``[C / groups, F]`` kernel -> ``[B, N, F]``.

    Output channel ``f`` belongs to group ``f // (F / groups)`` and reads input
    channels ``g * C / groups ... (g + 1) * C / groups`` (PyTorch's grouping).
    """
    if groups == 1:
        return tf.einsum("bnc,cf->bnf", samples, kernel)
    c_in, filters = int(kernel.shape[0]), int(kernel.shape[1])
    per_group = filters // groups
    grouped = tf.reshape(samples, [tf.shape(samples)[0], -1, groups, c_in])
    k = tf.transpose(tf.reshape(kernel, [c_in, groups, per_group]), [1, 0, 2])
    out = tf.einsum("bngc,gcf->bngf", grouped, k)
    return tf.reshape(out, [tf.shape(samples)[0], -1, filters])


def modulated_deform_conv2d(
    inputs: tf.Tensor,
    offsets: tf.Tensor,
    mask: tf.Tensor,
    kernel: tf.Tensor,
    strides: int = 1,
    groups: int = 1,
) -> tf.Tensor:
    """The modulated deformable 3x3 convolution (padding 1, dilation 1, one
    deformable group), without bias.

    Args:
        inputs: ``[B, H, W, C]``, any float dtype (the compute dtype).
        offsets: ``[B, Ho, Wo, 18]``, ``Ho = (H - 1) // strides + 1`` (so for
            ``Wo``): tap ``k``'s vertical offset in channel ``2k``, horizontal in
            ``2k + 1``, in input pixels.
        mask: ``[B, Ho, Wo, 9]``, the modulation of each tap (a sigmoid's output).
        kernel: ``[3, 3, C / groups, F]`` (HWIO), in ``inputs``' dtype.
        strides: 1 or 2.
        groups: grouped convolution (ResNeXt cardinality); divides C and F.

    Returns:
        ``[B, Ho, Wo, F]`` in ``inputs``' dtype.
    """
    dtype = inputs.dtype
    height, width, channels = _dim(inputs, 1), _dim(inputs, 2), int(inputs.shape[-1])
    filters = int(kernel.shape[-1])
    if channels % groups or filters % groups or int(kernel.shape[2]) * groups != channels:
        raise ValueError(
            f"kernel {tuple(kernel.shape)} does not fit {channels} input channels in "
            f"{groups} groups"
        )
    out_h, out_w = deform_output_size(height, strides), deform_output_size(width, strides)
    position_dtype = tf.float64 if dtype == tf.float64 else tf.float32
    indices, weights = bilinear_taps(offsets, mask, (height, width), strides, position_dtype)
    padded = tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
    flat = tf.reshape(padded, [tf.shape(inputs)[0], -1, channels])
    taps = tf.reshape(kernel, [TAPS, channels // groups, filters])
    out = _sum_of_taps(flat, indices, tf.cast(weights, dtype), taps, groups)
    return tf.cast(tf.reshape(out, [-1, out_h, out_w, filters]), dtype)


def _tap(flat, indices, weights, kernel, groups: int, sum_dtype) -> tf.Tensor:
    """One tap: its samples (four gathered corners, weighted) times its kernel slice.

    ``flat`` ``[B, P, C]``, ``indices`` ``[B, N, 4]``, ``weights`` ``[B, N, 4]``,
    ``kernel`` ``[C / groups, F]`` -> ``[B, N, F]`` in ``sum_dtype``.
    """
    samples = None
    for j in range(4):  # one gather per corner: XLA fuses it into the weighted sum
        corner = tf.gather(flat, indices[:, :, j], batch_dims=1) * weights[:, :, j, None]
        samples = corner if samples is None else samples + corner
    return tf.cast(_tap_product(samples, kernel, groups), sum_dtype)


def _sum_of_taps(flat, indices, weights, taps, groups: int) -> tf.Tensor:
    """``sum_k _tap(k)`` -> ``[B, N, F]`` (float32 for 16-bit inputs), one tap at a time.

    Both passes loop over the taps in a ``tf.while_loop``, so that one tap's
    corners are alive at a time in eager, graph and XLA execution alike (XLA
    schedules an unrolled loop's independent gathers together). The gradient
    recomputes each tap's samples instead of keeping every tap's corners and
    samples (``45 * B * N * C`` values at stride 1) from the forward pass.
    """
    dtype = flat.dtype
    sum_dtype = tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype
    batch, n, filters = tf.shape(indices)[0], tf.shape(indices)[1], int(taps.shape[-1])

    def tap(x, k, tap_weights, kernel):
        return _tap(x, tf.gather(indices, k, axis=2), tap_weights, kernel, groups, sum_dtype)

    def loop(body, start):
        return tf.while_loop(
            lambda k, *_: k < TAPS, body, (tf.constant(0), *start), parallel_iterations=1
        )[1:]

    @tf.custom_gradient
    def run(flat, indices, weights, taps):
        # An eager custom gradient's own ops are recorded on an outer tape, which
        # would keep their tensors; ops on stop_gradient's output are not recorded.
        x, w, kernels = (tf.stop_gradient(t) for t in (flat, weights, taps))

        def forward(k, out):
            return k + 1, out + tap(x, k, tf.gather(w, k, axis=2), tf.gather(kernels, k))

        (out,) = loop(forward, (tf.zeros([batch, n, filters], sum_dtype),))

        def grad(upstream):
            def backward(k, d_flat, d_weights, d_taps):
                tap_weights, kernel = tf.gather(w, k, axis=2), tf.gather(kernels, k)
                with tf.GradientTape() as tape:
                    tape.watch([x, tap_weights, kernel])
                    product = tap(x, k, tap_weights, kernel)
                d_x, d_w, d_kernel = tape.gradient(
                    product, [x, tap_weights, kernel], output_gradients=upstream
                )
                d_flat = d_flat + tf.cast(tf.convert_to_tensor(d_x), sum_dtype)
                return k + 1, d_flat, d_weights.write(k, d_w), d_taps.write(k, d_kernel)

            d_flat, d_weights, d_taps = loop(
                backward,
                (
                    tf.zeros(tf.shape(x), sum_dtype),
                    tf.TensorArray(dtype, size=TAPS, element_shape=w[:, :, 0].shape),
                    tf.TensorArray(dtype, size=TAPS, element_shape=kernels.shape[1:]),
                ),
            )
            d_weights = tf.transpose(d_weights.stack(), [1, 2, 0, 3])  # [B, N, 9, 4]
            return tf.cast(d_flat, dtype), None, d_weights, d_taps.stack()

        return out, grad

    return run(flat, indices, weights, taps)


@keras.saving.register_keras_serializable(package="atss_tf")
class ModulatedDeformConv2D(keras.layers.Layer):
    """3x3 modulated deformable convolution with its own offset conv (official ``DFConv2d``).

    The ``offset`` sub-layer, a plain 3x3 :class:`TorchConv2D` with bias (the
    same stride, padding 1, groups 1), gives 27 channels: 0..17 the offsets of
    :func:`modulated_deform_conv2d`, 18..26 the mask logits (through a sigmoid,
    in float32). Official keys ``<name>.offset.{weight,bias}`` are
    ``offset.{kernel,bias}``; ``<name>.conv.{weight,bias}`` are this layer's
    ``kernel`` and ``bias``.

    Args:
        filters: output channels F.
        strides: 1 or 2 (the offset conv strides the same).
        groups: grouped deformable conv (ResNeXt cardinality).
        use_bias: add a bias (the head towers' DCN has one, the backbone's not).
        frozen: create every weight non-trainable (a frozen backbone stage).
        kernel_initializer: of the ``[3, 3, C / groups, F]`` (HWIO) kernel;
            default the official uniform ``+-1 / sqrt(fan_in)``.
        bias_initializer: of the ``[F]`` bias.
        offset_initializer: of the offset conv's ``[3, 3, C, 27]`` kernel
            (its bias starts at 0): official ``DFConv2d`` kaiming uniform
            ``a=1`` in the backbone, the head's normal(0, 0.01) in the head.

    Input ``[B, H, W, C]``; output ``[B, (H - 1) // s + 1, (W - 1) // s + 1, F]``,
    in the compute dtype.
    """

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        groups: int = 1,
        use_bias: bool = False,
        frozen: bool = False,
        kernel_initializer=DEFORM_KERNEL_UNIFORM,
        bias_initializer="zeros",
        offset_initializer=KAIMING_UNIFORM_A1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)
        self.groups = int(groups)
        self.use_bias = bool(use_bias)
        self.frozen = bool(frozen)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.offset_initializer = keras.initializers.get(offset_initializer)
        if self.strides not in (1, 2):
            raise ValueError(f"deformable conv strides must be 1 or 2, got {self.strides}")
        if self.filters % self.groups:
            raise ValueError(f"filters={self.filters} is not divisible by groups={self.groups}")
        self.offset = TorchConv2D(
            OFFSET_CONV_CHANNELS,
            3,
            strides=self.strides,
            padding=1,
            use_bias=True,
            frozen=self.frozen,
            kernel_initializer=self.offset_initializer,
            bias_initializer="zeros",
            name="offset",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.offset.build(input_shape)
        build_conv_weights(self, input_shape, 3)

    def call(self, inputs):
        offset_mask = self.offset(inputs)
        offsets = offset_mask[..., :OFFSET_CHANNELS]
        mask = ops.sigmoid(ops.cast(offset_mask[..., OFFSET_CHANNELS:], "float32"))
        kernel = ops.cast(self.kernel, inputs.dtype)
        x = modulated_deform_conv2d(inputs, offsets, mask, kernel, self.strides, self.groups)
        if self.bias is not None:
            x = x + ops.cast(self.bias, x.dtype)
        return x

    def compute_output_shape(self, input_shape):
        def out(n):
            return None if n is None else deform_output_size(n, self.strides)

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.filters)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "strides": self.strides,
                "groups": self.groups,
                "use_bias": self.use_bias,
                "frozen": self.frozen,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "offset_initializer": keras.initializers.serialize(self.offset_initializer),
            }
        )
        return config
