"""Grouped convolutions train on CPU: TorchConv2D's grouped-conv gradient (TF's
CPU kernels have none; atss_tf.model.layers.grouped_conv2d supplies it) equals the
gradient of the split-by-group formulation, eagerly, in a tf.function and under
jit_compile, and a tiny ResNeXt detector runs a train step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from atss_tf.model import TorchConv2D
from atss_tf.model.layers import _grouped_gradient_by_group
from atss_tf.training.fit import build_training_model
from tests.helpers.tiny import tiny_config, with_synthetic_data

GROUPS = 4


def _split_reference(x: tf.Tensor, kernel: tf.Tensor, strides: int, pad: int) -> tf.Tensor:
    """The grouped conv as ``GROUPS`` plain convs on split tensors, concatenated
    (PyTorch's padding done by hand, then ``"VALID"``)."""
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    xs = tf.split(x, GROUPS, axis=-1)
    ks = tf.split(kernel, GROUPS, axis=-1)
    ys = [tf.nn.convolution(a, k, strides=strides, padding="VALID") for a, k in zip(xs, ks)]
    return tf.concat(ys, axis=-1)


def _gradients(conv_fn, x, kernel, weights):
    """d sum(conv(x, kernel) * weights) / d(x, kernel)."""
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        loss = tf.reduce_sum(conv_fn(x, kernel) * weights)
    return tape.gradient(loss, [x, kernel])


def _rel_error(got, want) -> float:
    got, want = np.asarray(got, "float64"), np.asarray(want, "float64")
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_cpu_only_machines_use_the_per_group_gradient():
    if not tf.config.list_physical_devices("GPU"):
        assert _grouped_gradient_by_group()


@pytest.mark.parametrize("mode", ["eager", "function", "jit_compile"])
@pytest.mark.parametrize("strides", [1, 2])
def test_grouped_gradient_equals_the_split_formulation(strides, mode):
    rng = np.random.default_rng(strides)
    x = tf.constant(rng.normal(size=(2, 9, 11, 16)), tf.float32)
    conv = TorchConv2D(24, 3, strides=strides, groups=GROUPS, use_bias=False)
    conv.build(x.shape)
    kernel = tf.constant(rng.normal(size=(3, 3, 16 // GROUPS, 24)), tf.float32)
    out = (9 + 2 - 3) // strides + 1, (11 + 2 - 3) // strides + 1
    weights = tf.constant(rng.normal(size=(2, *out, 24)), tf.float32)

    def layer_conv(x, kernel):
        conv.kernel.assign(kernel)
        return conv(x)

    def layer_gradients(x, kernel):
        # The kernel's gradient through the layer's variable, as in training.
        conv.kernel.assign(kernel)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(conv(x) * weights)
        return tape.gradient(loss, [x, conv.kernel])

    fn = {
        "eager": layer_gradients,
        "function": tf.function(layer_gradients),
        "jit_compile": tf.function(layer_gradients, jit_compile=True),
    }[mode]
    got_dx, got_dk = fn(x, kernel)
    want_dx, want_dk = _gradients(
        lambda a, k: _split_reference(a, k, strides, 1), x, kernel, weights
    )
    assert got_dx.shape == x.shape and got_dk.shape == kernel.shape
    assert _rel_error(got_dx, want_dx) < 1e-5
    assert _rel_error(got_dk, want_dk) < 1e-5
    # The forward pass stays the native grouped conv, equal to the split one.
    want_y = _split_reference(x, kernel, strides, 1)
    assert _rel_error(layer_conv(x, kernel), want_y) < 1e-5


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_grouped_gradient_in_half_precision(dtype):
    """Mixed precision: the layer computes in ``dtype``; its gradients come back
    in float32 for the variable and ``dtype`` for the input, near the float32 ones."""
    rng = np.random.default_rng(3)
    x32 = tf.constant(rng.normal(size=(1, 8, 8, 8)), tf.float32)
    conv = TorchConv2D(8, 3, strides=2, groups=GROUPS, use_bias=False, dtype=f"mixed_{dtype}")
    conv.build(x32.shape)
    x = tf.cast(x32, dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = conv(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32))
    dx, dk = tape.gradient(loss, [x, conv.kernel])
    assert y.dtype == dtype and dx.dtype == dtype and dk.dtype == tf.float32
    kernel = tf.convert_to_tensor(conv.kernel.value)
    want_dx, want_dk = _gradients(
        lambda a, k: _split_reference(a, k, 2, 1), x32, kernel, tf.ones_like(y, tf.float32)
    )
    assert _rel_error(dx, want_dx) < 2e-2
    assert _rel_error(dk, want_dk) < 2e-2


def test_tiny_resnext_trains_a_step(tmp_path):
    keras.utils.set_random_seed(0)
    extra = [
        "model.backbone.depth=50",
        "model.backbone.groups=4",
        "model.backbone.width_per_group=4",
        "data.batch_size=2",
    ]
    cfg = with_synthetic_data(tiny_config(extra), tmp_path, n_train=2, n_val=1)
    from atss_tf.data.pipeline import build_dataset
    from atss_tf.targets import TargetEncoder

    ds = build_dataset(
        cfg, "train", encoder_factory=lambda s: TargetEncoder.from_config(cfg, s), seed=0
    )
    x, y = next(iter(ds))
    model = build_training_model(cfg)
    grouped = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, TorchConv2D) and layer.groups == 4
    ]
    assert grouped, "the tiny ResNeXt has grouped convs"
    before = [np.asarray(layer.kernel) for layer in grouped]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    moved = [np.abs(np.asarray(layer.kernel) - b).max() for layer, b in zip(grouped, before)]
    assert max(moved) > 0  # the grouped kernels got a gradient
