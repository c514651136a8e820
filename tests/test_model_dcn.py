"""DCN in the detector by config: the settings and their checks, a small DCN
model's file round trip and gradients, ImageNet initialisation of a DCN
backbone, and the converter reading (or refusing) DCN checkpoint keys."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from atss_tf.config import ConfigError
from atss_tf.convert import ConversionError, infer_config
from atss_tf.inference import load_detector
from atss_tf.model import ModulatedDeformConv2D, ResNetBackbone, build_detector
from tests.helpers.tiny import tiny_config

SMALL_DCN = [
    "model.backbone.depth=50",
    "model.backbone.width_multiplier=0.125",
    "model.backbone.dcn_stages=[c3, c5]",
    "model.head.dcn=true",
    "model.head.num_convs=2",
]


@pytest.mark.parametrize(
    "overrides, culprit",
    [
        (["model.backbone.depth=50", "model.backbone.dcn_stages=[c6]"], "dcn_stages"),
        (["model.backbone.depth=50", "model.backbone.dcn_stages=[c3, c3]"], "distinct stages"),
        (["model.backbone.dcn_stages=[c4]"], "depth=18 .basic blocks"),
        (["model.head.num_convs=0", "model.head.dcn=true"], "model.head.dcn=True"),
    ],
)
def test_dcn_settings_are_checked(overrides, culprit):
    with pytest.raises(ConfigError, match=culprit):
        tiny_config(overrides)


def test_the_defaults_have_no_dcn():
    cfg = tiny_config()
    assert cfg.model.backbone.dcn_stages == () and cfg.model.head.dcn is False


def _images() -> np.ndarray:
    return (np.arange(2 * 64 * 64 * 3).reshape(2, 64, 64, 3) % 251).astype("float32")


def test_a_small_dcn_model_saves_reloads_and_trains(tmp_path):
    model = build_detector(tiny_config(SMALL_DCN))
    stages = [
        [isinstance(b.conv2, ModulatedDeformConv2D) for b in s] for s in model.backbone.stages
    ]
    assert [set(s) for s in stages] == [{False}, {True}, {False}, {True}]
    assert [isinstance(c, ModulatedDeformConv2D) for c in model.head.cls_tower_convs] == [
        False,
        True,
    ]
    # Offsets that move the samples, so that a wrong reload would show.
    for layer in (model.backbone.stages[1][0].conv2, model.head.bbox_tower_convs[1]):
        layer.offset.bias.assign(np.linspace(-2, 2, 27).astype("float32"))
    path = tmp_path / "dcn.keras"
    model.save(path)
    loaded = load_detector(path)
    assert loaded.detector_config == model.detector_config
    for key, value in loaded(_images()).items():
        np.testing.assert_array_equal(value, model(_images())[key], err_msg=key)

    gt = {
        "gt_boxes": tf.constant([[[8.0, 8.0, 40.0, 48.0]], [[20.0, 4.0, 60.0, 30.0]]]),
        "gt_labels": tf.constant([[1], [2]]),
        "gt_mask": tf.constant([[True], [True]]),
    }
    with tf.GradientTape() as tape:
        loss = loaded.compute_atss_losses({"images": _images()}, gt, training=True)["loss"]
    offsets = [w for w in loaded.trainable_weights if "/offset/" in w.path]
    assert len(offsets) == 2 * (4 + 3 + 2)  # c3 and c5 blocks, two towers; kernel and bias
    grads = tape.gradient(loss, offsets)
    assert all(np.isfinite(g).all() for g in grads)
    assert all(np.abs(g).max() > 0 for g in grads[::2])  # every offset kernel learns


def test_a_format_3_file_reads_as_a_network_without_dcn(tmp_path):
    """atss-tf 0.3 wrote format 3, without the DCN settings."""
    path = tmp_path / "m.keras"
    build_detector(tiny_config()).save(path)
    old = tmp_path / "v0_3.keras"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(old, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                entries = config["config"]
                assert entries["format_version"] == 4
                entries["format_version"] = 3
                del entries["detector"]["model"]["backbone"]["dcn_stages"]
                del entries["detector"]["model"]["head"]["dcn"]
                data = json.dumps(config).encode()
            zout.writestr(item, data)
    model = load_detector(old).detector_config.model
    assert model.backbone.dcn_stages == () and model.head.dcn is False


def test_imagenet_weights_fill_the_deformable_kernels():
    """keras.applications' conv2 kernels go into the DCN layers' kernels (the
    official loader renames conv2.weight to conv2.conv.weight); offset convs
    keep their initialisation."""
    from atss_tf.convert.keras_applications import (
        copy_keras_resnet_weights,
        keras_applications_resnet,
    )

    source = keras_applications_resnet(50, weights=None)
    backbone = ResNetBackbone(50, dcn_stages=("c4",))
    backbone.build((None, None, None, 3))
    offset_before = np.asarray(backbone.stages[2][0].conv2.offset.kernel)
    assert copy_keras_resnet_weights(source, backbone) == 1 + 16 * 3 + 4
    dcn = backbone.stages[2][1].conv2
    assert isinstance(dcn, ModulatedDeformConv2D)
    np.testing.assert_array_equal(dcn.kernel, source.get_layer("conv4_block2_2_conv").kernel)
    np.testing.assert_array_equal(backbone.stages[2][0].conv2.offset.kernel, offset_before)


def _shape_only_state(dcn_blocks: dict[int, range], head_dcn: int | None = 9) -> dict:
    """An R-50-shaped state dict of zeros, only the keys ``infer_config`` reads
    plus ``conv2.offset`` keys in ``dcn_blocks`` (stage -> blocks) and a DCN at
    head tower index ``head_dcn``."""
    z = np.zeros
    state = {}
    for s, count in enumerate((3, 4, 6, 3), start=1):
        for i in range(count):
            prefix = f"backbone.body.layer{s}.{i}"
            state[f"{prefix}.conv1.weight"] = z((1, 1, 1, 1))
            if i in dcn_blocks.get(s, ()):
                state[f"{prefix}.conv2.offset.weight"] = z((27, 1, 3, 3))
                state[f"{prefix}.conv2.conv.weight"] = z((64, 64, 3, 3))
    state["backbone.body.layer1.0.conv2.weight"] = z((64, 64, 3, 3))
    state["backbone.body.layer1.0.conv3.weight"] = z((256, 64, 1, 1))
    state["backbone.fpn.fpn_inner2.weight"] = z((256, 512, 1, 1))
    state["backbone.fpn.top_blocks.p6.weight"] = z((256, 256, 3, 3))
    for tower in ("cls_tower", "bbox_tower"):
        for i in (0, 3, 6, 9):
            key = f"rpn.head.{tower}.{i}"
            if i == head_dcn:
                state[f"{key}.offset.weight"] = z((27, 256, 3, 3))
                state[f"{key}.conv.weight"] = z((256, 256, 3, 3))
            else:
                state[f"{key}.weight"] = z((256, 256, 3, 3))
            state[f"rpn.head.{tower}.{i + 1}.weight"] = z((256,))
    state["rpn.head.bbox_pred.bias"] = z((4,))
    state["rpn.head.cls_logits.bias"] = z((80,))
    return state


def test_infer_config_reads_dcn_stages_and_the_head_dcn():
    cfg = infer_config(_shape_only_state({2: range(4), 3: range(6), 4: range(3)}))
    assert cfg.model.backbone.dcn_stages == ("c3", "c4", "c5")
    assert (cfg.model.head.dcn, cfg.model.head.num_convs, cfg.model.head.channels) == (
        True,
        4,
        256,
    )
    plain = infer_config(_shape_only_state({}, head_dcn=None))
    assert plain.model.backbone.dcn_stages == () and not plain.model.head.dcn


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s, "blocks \\[0, 1\\] of \\[0, 1, 2, 3, 4, 5\\]: only whole DCN stages"),
        (
            lambda s: s.update({"backbone.body.layer3.0.conv2.offset.weight": np.zeros((18,))}),
            "18 output channels: only modulated",
        ),
        (
            lambda s: s.update({"backbone.body.layer3.0.conv2.conv_offset.weight": np.zeros(1)}),
            "keys of another code base",
        ),
    ],
)
def test_infer_config_refuses_other_deformable_layouts(edit, message):
    state = _shape_only_state({3: range(2)})
    edit(state)
    with pytest.raises(ConversionError, match=message):
        infer_config(state)


def test_infer_config_refuses_a_deformable_conv_before_a_towers_last():
    with pytest.raises(ConversionError, match="only its last conv"):
        infer_config(_shape_only_state({}, head_dcn=3))


@pytest.mark.parametrize(
    "model, name, layer",
    [
        ("x50_32x4d_dcn", "backbone.body.layer3.0.conv2", lambda m: m.backbone.stages[2][0].conv2),
        ("r50_dcn", "rpn.head.cls_tower.9", lambda m: m.head.cls_tower_convs[3]),
    ],
)
def test_converted_dcn_layers_reproduce_the_recorded_ones(official_dcn_outputs, model, name, layer):
    """The checkpoint's offset conv, kernel and bias mapped into the layer: the
    authors' output from their input alone (the stride-2, 32-group first DCN of
    ResNeXt's c4, and the head's DCN with bias)."""
    from atss_tf.convert.official import load_official_weights, strip_prefix
    from atss_tf.convert.torch_pickle import load_state_dict
    from tests.helpers.fixtures import DCN_FIXTURES, dcn_layer_record, fixture_path

    state = strip_prefix(load_state_dict(fixture_path(f"{model}.pth", DCN_FIXTURES)))
    detector = build_detector(infer_config(state))
    load_official_weights(detector, state)
    rec = dcn_layer_record(official_dcn_outputs[model], name)
    got = np.asarray(layer(detector)(rec["input"]), np.float64)
    want = rec["output"]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


def test_the_layer_is_registered_for_model_files():
    assert keras.saving.get_registered_object("atss_tf>ModulatedDeformConv2D") is (
        ModulatedDeformConv2D
    )
