"""The Keras ATSS network: shapes, anchor order, serialisation, freezing, init, padding."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from atss_tf.anchors import anchor_shapes
from atss_tf.config import Config, detector_config_from_dict
from atss_tf.model import (
    ATSSDetector,
    FrozenBatchNorm,
    ResNetBackbone,
    TorchConv2D,
    TorchMaxPool2D,
    build_detector,
)
from atss_tf.model.file_format import FORMAT_VERSION
from tests.helpers import tiny

CANVAS = (128, 160)


def tiny_config(**anchors) -> Config:
    """The suite's tiny config (tests/helpers/tiny.py) with two tower convs, the stem and
    stage 1 frozen, and ``anchors``."""
    overrides = ["model.head.num_convs=2", "model.backbone.freeze_at=2"]
    overrides += [
        f"model.anchors.{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}"
        for k, v in anchors.items()
    ]
    return tiny.tiny_config(overrides)


def images(batch: int = 2, size=CANVAS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, *size, 3)).astype("float32")


def randomize(model: keras.Model, seed: int = 1) -> None:
    """Random values in every weight (frozen BN stats too) so mapping bugs show."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.path.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, w.shape)
        elif w.path.endswith(("weight", "gamma", "scale")):
            value = rng.uniform(0.5, 1.5, w.shape)
        else:
            value = rng.normal(0.0, 0.1, w.shape)
        w.assign(value.astype("float32"))


@pytest.fixture(scope="module")
def tiny_a9():
    """Tiny detector with the paper's #A = 9 anchors and random weights."""
    cfg = tiny_config(octave_base_scale=4.0, scales_per_octave=3, aspect_ratios=(0.5, 1.0, 2.0))
    model = build_detector(cfg)
    randomize(model)
    x = images()
    return model, x, {k: np.asarray(v) for k, v in model(x).items()}


def test_output_shapes_follow_anchor_grid(tiny_a9):
    model, x, out = tiny_a9
    grid = model.anchor_grid(CANVAS)
    assert grid is model.anchor_grid(CANVAS)  # cached
    assert grid.anchors_per_location == 9
    a = grid.num_anchors
    assert out["cls_logits"].shape == (2, a, 3)
    assert out["box_regression"].shape == (2, a, 4)
    assert out["centerness"].shape == (2, a, 1)
    assert all(v.dtype == np.float32 for v in out.values())
    feats = model.features(x)
    assert list(feats) == ["p3", "p4", "p5", "p6", "p7"]
    for (h, w), level in zip(grid.level_shapes, feats.values()):
        assert tuple(level.shape) == (2, h, w, 32)


def test_flattening_matches_anchor_order(tiny_a9):
    """Flattened index i <-> (level, y, x, anchor) exactly as generate_anchors lays out i."""
    model, x, out = tiny_a9
    grid = model.anchor_grid(CANVAS)
    per_level = {k: [np.asarray(t) for t in v] for k, v in model.head_outputs(x).items()}
    cfg = model.detector_config
    rng = np.random.default_rng(3)
    starts = grid.level_starts
    for index in list(rng.integers(0, grid.num_anchors, 40)) + [0, grid.num_anchors - 1]:
        level = int(grid.level_ids()[index])
        h, w = grid.level_shapes[level]
        local = index - starts[level]
        loc, a = divmod(local, 9)
        y, xx = divmod(loc, w)
        stride = grid.strides[level]
        center = np.array([xx, y]) * stride + grid.offsets[level]
        np.testing.assert_allclose(grid.centers[index], center, atol=1e-3)
        wh = anchor_shapes(
            stride, cfg.model.anchors, official_shapes=cfg.model.anchors.official_shapes
        )[a]
        box = grid.boxes[index]
        np.testing.assert_allclose([box[2] - box[0], box[3] - box[1]], wh, rtol=1e-5)
        np.testing.assert_array_equal(
            out["cls_logits"][1, index], per_level["cls_logits"][level][1, y, xx, a * 3 : a * 3 + 3]
        )
        np.testing.assert_array_equal(
            out["box_regression"][1, index],
            per_level["box_regression"][level][1, y, xx, a * 4 : a * 4 + 4],
        )
        assert out["centerness"][1, index, 0] == per_level["centerness"][level][1, y, xx, a]


def test_keras_save_load_round_trip(tiny_a9, tmp_path):
    model, x, out = tiny_a9
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ATSSDetector)
    assert loaded.detector_config == model.detector_config
    assert len(loaded.weights) == len(model.weights)
    again = loaded(x)
    for key, value in out.items():
        np.testing.assert_array_equal(np.asarray(again[key]), value, err_msg=key)


def test_get_config_from_config_round_trip(tiny_a9):
    model, x, out = tiny_a9
    config = model.get_config()
    assert config["format_version"] == FORMAT_VERSION
    assert detector_config_from_dict(config["detector"]) == model.detector_config
    clone = ATSSDetector.from_config(config)
    clone.build((None, None, None, 3))
    assert [w.path for w in clone.weights] == [w.path for w in model.weights]
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(x)["cls_logits"]), out["cls_logits"])
    for layer in (model.backbone, model.fpn, model.head, model.normalizer):
        rebuilt = type(layer).from_config(layer.get_config())
        assert rebuilt.get_config() == layer.get_config()


def test_jit_compiled_forward_matches_eager(tiny_a9):
    model, x, out = tiny_a9
    compiled = tf.function(lambda t: model(t, training=False), jit_compile=True)
    got = compiled(tf.constant(x))
    for key, value in out.items():
        np.testing.assert_allclose(np.asarray(got[key]), value, rtol=1e-4, atol=1e-4, err_msg=key)


def test_stem_and_stage1_frozen_batch_norm_never_trainable():
    cfg = tiny_config()
    model = build_detector(cfg)
    bb = model.backbone
    assert not bb.stem_conv1.kernel.trainable
    for block in bb.stages[0]:
        assert not block.conv1.kernel.trainable and not block.conv2.kernel.trainable
    for block in bb.stages[1]:
        assert block.conv1.kernel.trainable
    model.trainable = True  # must not thaw variable-level freezing
    trainable = {id(w) for w in model.trainable_weights}
    assert id(bb.stem_conv1.kernel) not in trainable
    frozen_bn = [layer for layer in bb._flatten_layers() if isinstance(layer, FrozenBatchNorm)]
    assert len(frozen_bn) == 1 + 2 * 8 + 3  # stem + 2 per basic block + 3 projections
    for layer in frozen_bn:
        assert layer.trainable_weights == []
        assert all(id(w) not in trainable for w in layer.weights)
    assert all(id(w) in trainable for w in model.head.weights)

    cfg.model.backbone.freeze_at = 0
    thawed = ATSSDetector(cfg)
    thawed.build((None, None, None, 3))
    assert thawed.backbone.stem_conv1.kernel.trainable


def test_head_initialisation_and_point_regression():
    cfg = tiny_config()
    cfg.model.head.regression = "point"
    model = build_detector(cfg)
    head = model.head
    prior = -math.log((1 - 0.01) / 0.01)
    np.testing.assert_allclose(np.asarray(head.cls_logits.bias), prior, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(head.bbox_pred.bias), 4.0)
    np.testing.assert_array_equal(np.asarray(head.centerness.bias), 0.0)
    assert [float(s.scale.numpy()) for s in head.scales] == [1.0] * 5
    kernel = np.asarray(head.cls_tower_convs[0].kernel)
    assert abs(kernel.std() - 0.01) < 0.001 and abs(kernel.mean()) < 0.001
    np.testing.assert_array_equal(np.asarray(head.cls_tower_norms[0].gamma), 1.0)
    # FPN: kaiming uniform a=1 -> U(-sqrt(3 / fan_in), +sqrt(3 / fan_in)), zero bias.
    inner = np.asarray(model.fpn.fpn_inner4.kernel)
    bound = math.sqrt(3.0 / inner.shape[2])
    assert np.abs(inner).max() <= bound and np.abs(inner).max() > 0.9 * bound
    np.testing.assert_array_equal(np.asarray(model.fpn.p6.bias), 0.0)

    randomize(model)
    head.bbox_pred.bias.assign(np.full(4, -5.0, "float32"))
    box = np.asarray(model(images(1))["box_regression"])
    assert box.min() == 0.0  # ReLU after the scale
    assert np.mean(box == 0.0) > 0.5


def test_without_group_norm():
    cfg = tiny_config()
    cfg.model.head.use_group_norm = False
    model = build_detector(cfg)
    assert model.head.cls_tower_norms == [] and model.head.bbox_tower_norms == []
    assert not any("norm" in w.path for w in model.head.weights)
    assert model(images(1))["cls_logits"].shape == (1, model.anchor_grid(CANVAS).num_anchors, 3)


def test_mixed_precision_forward():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_detector(tiny_config())
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.backbone.stem_conv1.compute_dtype == "float16"
    assert model.backbone.stem_bn1.running_var.dtype == "float32"
    assert model.normalizer.compute_dtype == "float32"
    out = model(images(1))
    assert all(v.dtype == "float32" and np.isfinite(np.asarray(v)).all() for v in out.values())


def test_detector_rejects_other_strides():
    cfg = tiny_config(strides=(8, 16, 32, 64))
    with pytest.raises(ValueError, match="P3..P7"):
        ATSSDetector(cfg)


def _numpy_conv(x, kernel, stride, pad):
    """Reference NHWC conv with symmetric zero padding (PyTorch semantics)."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = kernel.shape[0]
    ho = (x.shape[1] - k) // stride + 1
    wo = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[3]))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return out


@pytest.mark.parametrize("size", [5, 6])
def test_stride2_conv_pads_symmetrically_like_pytorch(size):
    rng = np.random.default_rng(size)
    x = rng.normal(size=(1, size, size, 2)).astype("float32")
    conv = TorchConv2D(3, 3, strides=2, use_bias=False)
    conv.build(x.shape)
    kernel = rng.normal(size=(3, 3, 2, 3)).astype("float32")
    conv.kernel.assign(kernel)
    got = np.asarray(conv(x))
    want = _numpy_conv(x.astype("float64"), kernel.astype("float64"), 2, 1)
    assert got.shape == want.shape == (1, (size + 1) // 2, (size + 1) // 2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if size == 6:  # TF "same" would pad bottom/right only and give different numbers
        same = np.asarray(keras.ops.conv(x, kernel, strides=2, padding="same"))
        assert np.abs(same - want).max() > 1e-2


def test_grouped_conv_matches_per_group_reference():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1, 6, 6, 4)).astype("float32")
    conv = TorchConv2D(6, 3, strides=2, groups=2, use_bias=False)
    conv.build(x.shape)
    kernel = rng.normal(size=(3, 3, 2, 6)).astype("float32")
    conv.kernel.assign(kernel)
    want = np.concatenate(
        [
            _numpy_conv(x[..., 2 * g : 2 * g + 2], kernel[..., 3 * g : 3 * g + 3], 2, 1)
            for g in (0, 1)
        ],
        axis=-1,
    )
    np.testing.assert_allclose(np.asarray(conv(x)), want, rtol=1e-5, atol=1e-5)


def test_max_pool_pads_with_minus_infinity():
    x = -1.0 - np.arange(36, dtype="float32").reshape(1, 6, 6, 1)
    got = np.asarray(TorchMaxPool2D(3, strides=2, padding=1)(x))[0, :, :, 0]
    padded = np.pad(x[0, :, :, 0], 1, constant_values=-np.inf)
    want = np.array(
        [[padded[2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max() for j in range(3)] for i in range(3)]
    )
    np.testing.assert_array_equal(got, want)
    assert got.max() < 0  # zero padding would have produced zeros on the border


def test_frozen_batch_norm_has_no_epsilon():
    bn = FrozenBatchNorm()
    bn.build((None, 4))
    weight = np.array([1.0, 2.0, 0.5, 1.0], "float32")
    bias = np.array([0.1, -0.2, 0.3, 0.0], "float32")
    mean = np.array([0.5, 1.0, -1.0, 2.0], "float32")
    var = np.array([1e-6, 4.0, 0.25, 1e-8], "float32")  # tiny variances expose any epsilon
    for v, value in zip(
        (bn.weight, bn.bias, bn.running_mean, bn.running_var), (weight, bias, mean, var)
    ):
        v.assign(value)
    x = np.array([[1.0, 2.0, 3.0, 2.5]], "float32")
    want = (x - mean) * weight / np.sqrt(var.astype("float64")) + bias
    np.testing.assert_allclose(np.asarray(bn(x)), want, rtol=1e-5)
    assert bn.trainable_weights == []


def test_resnext_and_stride_placement():
    common = dict(depth=50, groups=4, width_per_group=8, width_multiplier=0.25, freeze_at=0)
    x = np.random.default_rng(0).normal(size=(1, 64, 96, 3)).astype("float32")
    for stride_in_1x1 in (True, False):
        bb = ResNetBackbone(stride_in_1x1=stride_in_1x1, **common)
        bb.build(x.shape)
        block = bb.stages[1][0]
        assert block.conv1.strides == (2 if stride_in_1x1 else 1)
        assert block.conv2.strides == (1 if stride_in_1x1 else 2)
        # stage 2 width = groups * width_per_group * 2 * 0.25 = 16; 4 groups of 4 inputs
        assert tuple(block.conv2.kernel.shape) == (3, 3, 4, 16)
        feats = bb(x)
        assert {k: tuple(v.shape) for k, v in feats.items()} == {
            "c2": (1, 16, 24, 64),
            "c3": (1, 8, 12, 128),
            "c4": (1, 4, 6, 256),
            "c5": (1, 2, 3, 512),
        }
        assert bb.out_channels == {"c2": 64, "c3": 128, "c4": 256, "c5": 512}


def test_group_norm_groups_contiguous_channels_like_pytorch():
    """Keras channels-last grouping == PyTorch NCHW grouping (contiguous channel blocks)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 4, 16)).astype("float32") * np.arange(1, 17, dtype="float32")
    model = build_detector(tiny_config())
    norm = model.head.cls_tower_norms[0]
    got = np.asarray(norm(np.tile(x, (1, 1, 1, 2))))  # 32 channels, 8 groups of 4
    nchw = np.tile(x, (1, 1, 1, 2)).transpose(0, 3, 1, 2).reshape(2, 8, -1).astype("float64")
    ref = (nchw - nchw.mean(-1, keepdims=True)) / np.sqrt(nchw.var(-1, keepdims=True) + 1e-5)
    ref = ref.reshape(2, 32, 5, 4).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
