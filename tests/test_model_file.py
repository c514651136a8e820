"""What a ``.keras`` file holds, and files of older versions still loading.

``tests/assets/detector_v0_1.keras`` was written by atss-tf 0.1.0 (format 1:
the whole training config, ``official_compat: true``, a data path and a
schedule inside); ``detector_v0_1_outputs.npz`` holds that version's raw
outputs and ``predict`` detections on a fixed 64x64 image
(``np.arange(64 * 64 * 3) % 251``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from atss_tf.config import load_config
from atss_tf.errors import CheckpointError
from atss_tf.inference import load_detector
from atss_tf.model import ATSSDetector, build_detector
from atss_tf.model.file_format import FORMAT_VERSION
from tests.helpers.tiny import tiny_config

ASSETS = Path(__file__).parent / "assets"
V0_1 = ASSETS / "detector_v0_1.keras"


# The outputs were written on one CPU; oneDNN picks its convolution kernels per
# CPU, so another computes them to within a float32 rounding (1e-7 relative
# seen), while any other weights or layer would be off by far more.
SAME_WEIGHTS = {"rtol": 1e-6, "atol": 1e-6}


def _image() -> np.ndarray:
    return (np.arange(64 * 64 * 3).reshape(1, 64, 64, 3) % 251).astype("float32")


def _config_json(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("config.json"))


def _rewrite_config_json(src: Path, dst: Path, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config["config"])
                data = json.dumps(config).encode()
            zout.writestr(item, data)


def test_a_file_written_by_version_0_1_loads_and_gives_the_same_outputs():
    want = np.load(ASSETS / "detector_v0_1_outputs.npz")
    model = load_detector(V0_1)
    dc = model.detector_config
    # official_compat: true in the old file becomes the concrete geometry.
    assert (dc.model.anchors.alignment, dc.model.anchors.official_shapes) == ("official", True)
    assert dc.model.inclusive_geometry is True
    assert model.class_names == ["circle", "square", "triangle"]
    assert (dc.test_size, dc.max_size, dc.canvases) == (128, 128, ((128, 128),))
    out = model(_image())
    for key in ("cls_logits", "box_regression", "centerness"):
        np.testing.assert_allclose(np.asarray(out[key]), want[key], **SAME_WEIGHTS, err_msg=key)
    det = model.predict(_image(), verbose=0)
    n = int(want["det_num_detections"][0])
    assert int(det["num_detections"][0]) == n
    np.testing.assert_array_equal(det["classes"][0, :n], want["det_classes"][0, :n])
    np.testing.assert_allclose(det["scores"][0, :n], want["det_scores"][0, :n], atol=1e-6)
    np.testing.assert_allclose(det["boxes"][0, :n], want["det_boxes"][0, :n], atol=1e-4)


def test_a_version_0_1_file_ignores_its_training_sections(tmp_path):
    """Old files carry data/train/assigner settings; fields renamed or removed
    there later must not make them unloadable."""
    edited = tmp_path / "old.keras"

    def edit(config):
        config["config"]["train"]["a_field_renamed_later"] = 1
        config["config"]["data"]["removed_field"] = "x"
        config["config"]["assigner"] = {"no_longer": "valid"}

    _rewrite_config_json(V0_1, edited, edit)
    model = load_detector(edited)
    np.testing.assert_allclose(
        np.asarray(model(_image())["cls_logits"]),
        np.load(ASSETS / "detector_v0_1_outputs.npz")["cls_logits"],
        **SAME_WEIGHTS,
    )


def test_a_saved_model_holds_the_model_and_no_data_paths_or_schedule(tmp_path):
    cfg = tiny_config(
        [
            "data.train_annotations=/secret/train.json",
            "data.val_images=/secret/val",
            "train.lr_steps=[777]",
            "train.max_iters=4242",
            "assigner.topk=7",
        ]
    )
    from atss_tf.training.fit import build_training_model

    model = build_training_model(cfg)  # compiled: optimizer and schedule attached
    path = tmp_path / "m.keras"
    model.save(path)
    text = json.dumps(_config_json(path))
    for leaked in ("/secret", "4242", "777", "lr_steps", "train_annotations", "assigner"):
        assert leaked not in text, leaked
    entries = _config_json(path)["config"]
    assert entries["format_version"] == FORMAT_VERSION
    assert set(entries["detector"]) == {"model", "postprocess", "test_size", "max_size", "canvases"}
    assert "compile_config" not in _config_json(path)
    loaded = load_detector(path)
    assert loaded.detector_config == cfg.detector_config()


def test_a_newer_format_is_refused_naming_the_version(tmp_path):
    model = build_detector(tiny_config())
    path = tmp_path / "m.keras"
    model.save(path)
    newer = tmp_path / "newer.keras"
    _rewrite_config_json(path, newer, lambda c: c.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1}.*newer atss-tf"):
        load_detector(newer)


def test_invalid_settings_in_a_model_file_name_the_key(tmp_path):
    model = build_detector(tiny_config())
    path = tmp_path / "m.keras"
    model.save(path)
    bad = tmp_path / "bad.keras"
    _rewrite_config_json(path, bad, lambda c: c["detector"]["postprocess"].update(nms_iou=7.0))
    with pytest.raises(CheckpointError, match="postprocess.nms_iou=7.0"):
        load_detector(bad)


def test_training_settings_come_from_compile_not_the_model(tmp_path):
    cfg = load_config(None, ["model.num_classes=3", "assigner.type=fcos", "loss.focal_gamma=1.5"])
    from atss_tf.training.fit import compile_detector

    model = compile_detector(ATSSDetector(cfg), cfg)
    assert model.assigner_config.type == "fcos" and model.loss_config.focal_gamma == 1.5
    fresh = ATSSDetector(cfg)  # not compiled: Config()'s training settings
    assert fresh.assigner_config.type == "atss" and fresh.loss_config.focal_gamma == 2.0


def test_the_asset_is_unchanged():
    """The v0.1 file must stay as written by v0.1 (regenerating it would hide a break)."""
    entries = _config_json(V0_1)["config"]
    assert "format_version" not in entries and entries["config"]["official_compat"] is True
    assert V0_1.stat().st_size < 600_000
    assert keras.saving.get_registered_object("atss_tf>ATSSDetector") is ATSSDetector


def test_a_format_2_file_reads_category_ids_as_the_labels(tmp_path):
    """atss-tf 0.2 wrote format 2, without model.category_ids."""
    path = tmp_path / "m.keras"
    build_detector(tiny_config(["model.category_ids=[2, 5, 9]"])).save(path)
    assert load_detector(path).category_ids == [2, 5, 9]
    old = tmp_path / "v0_2.keras"

    def as_format_2(entries):
        entries.update(format_version=2)
        del entries["detector"]["model"]["category_ids"]

    _rewrite_config_json(path, old, as_format_2)
    assert load_detector(old).category_ids == [1, 2, 3]


def test_model_category_ids_must_match_the_classes():
    from atss_tf.config import ConfigError

    for bad in ("[2, 5]", "[2, 2, 9]", "[0, 1, 2]"):
        with pytest.raises(ConfigError, match="model.category_ids"):
            tiny_config([f"model.category_ids={bad}"])
