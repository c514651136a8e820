"""The modulated deformable convolution against the authors' recorded layers, a
literal NumPy transcription of their kernel, plain and dilated convolutions,
finite differences, XLA and 16-bit policies."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from atss_tf.model.deformable import (
    OFFSET_CHANNELS,
    ModulatedDeformConv2D,
    modulated_deform_conv2d,
)
from atss_tf.model.layers import TorchConv2D
from tests.helpers.fixtures import dcn_layer_record
from tests.helpers.reference_deformable import deform_conv_reference

# The DCN layers each fixture recorded (fixture README: the first block of each
# DCN stage and the classification tower's DCN on P3).
RECORDED = {
    "r50_dcn": (
        "backbone.body.layer2.0.conv2",
        "backbone.body.layer3.0.conv2",
        "backbone.body.layer4.0.conv2",
        "rpn.head.cls_tower.9",
    ),
    "x50_32x4d_dcn": (
        "backbone.body.layer3.0.conv2",
        "backbone.body.layer4.0.conv2",
        "rpn.head.cls_tower.9",
    ),
}
LAYERS = [(model, name) for model, names in RECORDED.items() for name in names]


def relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _split(offset_conv_output):
    """The offset conv's 27 channels -> offsets and sigmoid mask (as DFConv2d)."""
    om = tf.convert_to_tensor(offset_conv_output)
    return om[..., :OFFSET_CHANNELS], tf.sigmoid(om[..., OFFSET_CHANNELS:])


def _random(shape, seed, scale=1.0, dtype="float32"):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)


def test_the_fixtures_record_the_layers_tested_here(official_dcn_outputs):
    for model, names in RECORDED.items():
        assert tuple(official_dcn_outputs[model]["layer_names"]) == names


@pytest.mark.parametrize("model, name", LAYERS)
def test_a_recorded_official_layer_is_reproduced(official_dcn_outputs, model, name):
    """Input and offset-conv output of the authors' layer -> their output (1e-5)."""
    rec = dcn_layer_record(official_dcn_outputs[model], name)
    offsets, mask = _split(rec["offset_conv_output"])
    got = modulated_deform_conv2d(
        tf.constant(rec["input"]), offsets, mask, rec["kernel"], rec["stride"], rec["groups"]
    )
    if rec["bias"] is not None:
        got = got + rec["bias"]
    assert got.shape == rec["output"].shape
    assert relative_error(got, rec["output"]) < 1e-5


def test_the_layer_applies_its_offset_conv_sigmoid_and_bias(official_dcn_outputs):
    """The layer with the recorded head DCN's kernel and bias, its offset conv
    made constant (kernel 0, bias one position's recorded 27 values): its own
    call (offset conv, split, sigmoid, bias) equals the function given those
    offsets and masks everywhere."""
    rec = dcn_layer_record(official_dcn_outputs["r50_dcn"], "rpn.head.cls_tower.9")
    layer = ModulatedDeformConv2D(rec["kernel"].shape[-1], use_bias=True)
    x = rec["input"][:, :6, :7]
    layer.build(x.shape)
    layer.kernel.assign(rec["kernel"])
    layer.bias.assign(rec["bias"])
    layer.offset.kernel.assign(np.zeros(layer.offset.kernel.shape, "float32"))
    om = rec["offset_conv_output"][0, 3, 4]  # one position's 27 values, everywhere
    layer.offset.bias.assign(om)
    offsets, mask = _split(np.broadcast_to(om, (1, 6, 7, 27)))
    want = modulated_deform_conv2d(tf.constant(x), offsets, mask, rec["kernel"]) + rec["bias"]
    np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strides, groups", [(1, 1), (2, 1), (1, 4), (2, 4)])
def test_random_fractional_offsets_match_the_literal_kernel(strides, groups):
    """Offsets up to 3 px (many positions between pixels and outside the map),
    some positions exactly on the zero rule's edges, against the NumPy loops."""
    x = _random((2, 7, 6, 8), 0)
    out_h, out_w = (7 - 1) // strides + 1, (6 - 1) // strides + 1
    offsets = _random((2, out_h, out_w, 18), 1, scale=1.5)
    # Tap 0 of output (0, 0) samples at (-1 + dy, -1 + dx): exactly -1 (zero),
    # just inside, and exactly on the last row / column (kept).
    offsets[0, 0, 0, :2] = (0.0, 0.3)
    offsets[0, 0, 0, 2:4] = (1e-3, 0.0)
    offsets[1, -1, -1, 16:18] = (7 - 1 - ((out_h - 1) * strides + 1), 0.25)
    mask = np.random.default_rng(2).uniform(size=(2, out_h, out_w, 9)).astype("float32")
    kernel = _random((3, 3, 8 // groups, 4), 3)
    got = modulated_deform_conv2d(tf.constant(x), offsets, mask, kernel, strides, groups)
    want = deform_conv_reference(x, offsets, mask, kernel, strides, groups)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strides, groups, size", [(1, 1, (9, 8)), (2, 1, (9, 8)), (2, 4, (8, 7))])
def test_zero_offsets_and_unit_mask_are_a_plain_conv(strides, groups, size):
    """The layer with its offset conv giving 0 offsets and mask logits of 40
    (sigmoid 1.0 in float32) equals TorchConv2D with the same kernel and bias."""
    x = _random((2, *size, 8), 4)
    layer = ModulatedDeformConv2D(12, strides=strides, groups=groups, use_bias=True)
    conv = TorchConv2D(12, 3, strides=strides, groups=groups, use_bias=True)
    layer.build(x.shape)
    conv.build(x.shape)
    layer.kernel.assign(_random(layer.kernel.shape, 5))
    layer.bias.assign(_random((12,), 6))
    layer.offset.kernel.assign(np.zeros(layer.offset.kernel.shape, "float32"))
    layer.offset.bias.assign(np.r_[np.zeros(18), np.full(9, 40.0)].astype("float32"))
    conv.kernel.assign(layer.kernel)
    conv.bias.assign(layer.bias)
    got = layer(x)
    assert got.shape == conv.compute_output_shape(x.shape) == layer.compute_output_shape(x.shape)
    np.testing.assert_allclose(got, conv(x), rtol=1e-5, atol=1e-5)


def test_integer_offsets_are_a_shifted_conv():
    """Every tap moved by (dy, dx) = (2, -1): the plain conv of the zero-extended
    input, read 2 rows down and 1 column left."""
    x = _random((1, 8, 9, 5), 7)
    kernel = _random((3, 3, 5, 6), 8)
    offsets = np.tile(np.array([2.0, -1.0], "float32"), (1, 8, 9, 9))
    got = modulated_deform_conv2d(tf.constant(x), offsets, np.ones((1, 8, 9, 9), "float32"), kernel)
    # VALID conv on x padded by 4: out[a, b] reads x[a + i - 4, b + j - 4];
    # the DCN's (y, x) reads x[y - 1 + i + 2, x - 1 + j - 1]: a = y + 5, b = x + 2.
    extended = tf.nn.conv2d(np.pad(x, [(0, 0), (4, 4), (4, 4), (0, 0)]), kernel, 1, "VALID")
    np.testing.assert_allclose(got, extended[:, 5 : 5 + 8, 2 : 2 + 9], rtol=1e-5, atol=1e-5)


def test_offsets_that_spread_the_taps_are_a_dilated_conv():
    """Tap (i, j) moved by (i - 1, j - 1): a 3x3 conv with dilation 2, padding 2."""
    x = _random((2, 7, 10, 4), 9)
    kernel = _random((3, 3, 4, 3), 10)
    spread = np.array([[i - 1, j - 1] for i in range(3) for j in range(3)], "float32").ravel()
    offsets = np.broadcast_to(spread, (2, 7, 10, 18))
    got = modulated_deform_conv2d(
        tf.constant(x), offsets, np.ones((2, 7, 10, 9), "float32"), kernel
    )
    want = tf.nn.conv2d(x, kernel, 1, "SAME", dilations=2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _tiny_case(strides: int, groups: int):
    """float64 input, offsets, mask and kernel whose sampling positions stay
    1e-2 away from pixel centres and from the zero rule's edges, where the
    bilinear interpolation has kinks."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(1, 4, 4, 2))
    out_h, out_w = (4 - 1) // strides + 1, (4 - 1) // strides + 1
    offsets = rng.uniform(-1.4, 1.4, size=(1, out_h, out_w, 18))
    # Positions: offset + an integer, so its distance to integers is the offset's.
    frac = np.abs(offsets - np.round(offsets))
    offsets = np.where(frac < 1e-2, offsets + 0.05, offsets)
    mask = rng.uniform(0.1, 0.9, size=(1, out_h, out_w, 9))
    kernel = rng.normal(size=(3, 3, 2 // groups, 2))
    return [tf.constant(v) for v in (x, offsets, mask, kernel)]


@pytest.mark.parametrize("strides, groups", [(1, 1), (2, 2)])
def test_gradients_match_finite_differences(strides, groups):
    """d out / d (input, offsets, mask, kernel), float64: the gradient of a random
    projection of the output along random directions, against central differences."""
    args = _tiny_case(strides, groups)
    rng = np.random.default_rng(12)
    out_shape = modulated_deform_conv2d(*args, strides=strides, groups=groups).shape
    projection = tf.constant(rng.normal(size=out_shape))

    @tf.function
    def loss(*parts):
        out = modulated_deform_conv2d(*parts, strides=strides, groups=groups)
        return tf.reduce_sum(out * projection)

    with tf.GradientTape() as tape:
        tape.watch(args)
        value = loss(*args)
    grads = tape.gradient(value, args)
    delta = 1e-6
    for i, (arg, grad) in enumerate(zip(args, grads)):
        for _ in range(3):
            direction = rng.normal(size=arg.shape)
            plus, minus = list(args), list(args)
            plus[i], minus[i] = arg + delta * direction, arg - delta * direction
            numerical = (loss(*plus) - loss(*minus)) / (2 * delta)
            analytic = np.sum(np.asarray(grad) * direction)
            np.testing.assert_allclose(analytic, numerical, rtol=1e-6, atol=1e-8, err_msg=str(i))


def test_xla_and_eager_agree_forward_and_backward():
    x = tf.constant(_random((2, 9, 11, 8), 12))
    layer = ModulatedDeformConv2D(6, strides=2, groups=2, use_bias=True)
    layer.build(x.shape)
    layer.offset.kernel.assign(_random(layer.offset.kernel.shape, 13, scale=0.3))

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.sin(y))
        return [y, *tape.gradient(loss, [x, *layer.trainable_weights])]

    eager = step(x)
    compiled = tf.function(step, jit_compile=True)(x)
    assert len(layer.trainable_weights) == 4  # kernel, bias, offset kernel and bias
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("policy, tolerance", [("mixed_bfloat16", 2e-2), ("mixed_float16", 5e-3)])
def test_16_bit_policies_compute_in_16_bits_near_float32(policy, tolerance):
    x = _random((1, 8, 8, 16), 14)
    reference = ModulatedDeformConv2D(16, use_bias=True)
    reference.build(x.shape)
    reference.offset.kernel.assign(_random(reference.offset.kernel.shape, 15, scale=0.2))
    layer = ModulatedDeformConv2D(16, use_bias=True, dtype=policy)
    layer.build(x.shape)
    layer.set_weights(reference.get_weights())
    assert layer.kernel.dtype == "float32"
    got = layer(x)
    assert got.dtype == layer.compute_dtype
    assert relative_error(tf.cast(got, "float32"), reference(x)) < tolerance
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.cast(tf.function(layer, jit_compile=True)(x), "float32"))
    grads = tape.gradient(loss, layer.trainable_weights)
    assert all(np.isfinite(g).all() for g in grads)


def test_the_layer_serialises_and_saves(tmp_path):
    layer = ModulatedDeformConv2D(
        6, strides=2, groups=3, use_bias=True, frozen=True, offset_initializer="zeros"
    )
    clone = ModulatedDeformConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert (clone.strides, clone.groups, clone.use_bias, clone.frozen) == (2, 3, True, True)
    inputs = keras.Input((9, 9, 6))
    model = keras.Model(inputs, ModulatedDeformConv2D(4, strides=2, name="dcn")(inputs))
    model.get_layer("dcn").offset.bias.assign(_random((27,), 16))
    path = tmp_path / "dcn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _random((1, 9, 9, 6), 17)
    np.testing.assert_array_equal(loaded(x), model(x))
    assert isinstance(loaded.get_layer("dcn"), ModulatedDeformConv2D)


def test_a_frozen_layer_has_no_trainable_weights():
    layer = ModulatedDeformConv2D(4, frozen=True)
    layer.build((None, 5, 5, 4))
    assert layer.trainable_weights == [] and len(layer.weights) == 3


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="strides must be 1 or 2"):
        ModulatedDeformConv2D(4, strides=3)
    with pytest.raises(ValueError, match="not divisible by groups"):
        ModulatedDeformConv2D(6, groups=4)
    with pytest.raises(ValueError, match="does not fit"):
        modulated_deform_conv2d(
            tf.zeros((1, 4, 4, 6)), tf.zeros((1, 4, 4, 18)), tf.ones((1, 4, 4, 9)),
            tf.zeros((3, 3, 6, 4)), groups=2,
        )  # fmt: skip
