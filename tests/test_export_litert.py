"""The LiteRT export: ``atss-tf export --format litert`` run in the ai-edge-litert
interpreter against the Keras model on the same image, quantized files within
their measured bounds (slow lane), and the options it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from atss_tf import cli
from atss_tf.export_litert import (
    LITERT_OUTPUT_KEYS,
    LiteRTDetector,
    prepare_input,
)
from atss_tf.inference import load_detector
from atss_tf.inference import test_transform as model_transform
from atss_tf.model.detector import build_detector
from tests.helpers.fixtures import load_fixture
from tests.helpers.tiny import tiny_config

# An untrained head scores about 0.01: keep its boxes so that NMS has work to do.
# Category ids 2, 5, 9 so that the label -> category id mapping is checked.
OVERRIDES = [
    "postprocess.score_threshold=0.001",
    "model.category_ids=[2, 5, 9]",
    "model.class_names=[a, b, c]",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untrained model saved as ``.keras``, and a photo whose test-time
    resize (91x127 on the 128x128 canvas) leaves padding."""
    root = tmp_path_factory.mktemp("litert")
    weights = root / "tiny.keras"
    keras.utils.set_random_seed(0)
    build_detector(tiny_config(OVERRIDES)).save(weights)
    photo = load_fixture("official_outputs.npz")["input_rgb_uint8"]
    image = np.asarray(Image.fromarray(photo).resize((140, 100), Image.BILINEAR))
    return {"root": root, "weights": weights, "model": load_detector(weights), "image": image}


def _export(tiny, out: Path, *extra: str) -> LiteRTDetector:
    argv = ["export", "--format", "litert", "--weights", str(tiny["weights"]), "--out", str(out)]
    assert cli.main([*argv, *extra]) == 0
    return LiteRTDetector(out, num_threads=2)


def _keras(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The Keras model on the LiteRT inputs: the same uint8 pixels, the padding
    set to the model's padding value as the LiteRT graph sets it."""
    info = inputs["image_info"]
    h, w = (int(v) for v in info[0, 1])
    pad = np.asarray(model_transform(model).pad_value, np.float32)
    x = np.broadcast_to(pad, inputs["image"].shape).copy()
    x[:, :h, :w] = inputs["image"][:, :h, :w]
    det = model.predict_on_batch({"images": x, "image_info": info})
    return {k: np.asarray(v) for k, v in det.items()}


def test_float32_file_gives_the_keras_detections(tiny, tmp_path):
    runner = _export(tiny, tmp_path / "lite")
    meta = json.loads((tmp_path / "lite" / "model.json").read_text())
    assert meta["inputs"]["image"] == {"dtype": "uint8", "shape": [1, 128, 128, 3]}
    assert meta["class_names"] == ["a", "b", "c"] and meta["category_ids"] == [2, 5, 9]
    assert meta["quantize"] == "float32" and meta["canvas"] == [128, 128]
    ops = {op["op_name"] for op in runner.interpreter._get_ops_details()}
    assert "WHILE" in ops and not any(o.startswith("Flex") or o == "CUSTOM" for o in ops), ops

    inputs = prepare_input(tiny["image"], runner.params)
    assert inputs["image_info"][0, 1].tolist() == [91, 127]  # padding below and right
    out = runner.run(inputs)
    assert set(out) == set(LITERT_OUTPUT_KEYS)
    ref = _keras(tiny["model"], inputs)
    n = int(ref["num_detections"][0])
    assert n == 100 and out["num_detections"].tolist() == [n]
    np.testing.assert_allclose(out["detection_scores"][0], ref["scores"][0], atol=1e-4)
    np.testing.assert_allclose(
        out["detection_boxes"][0], ref["boxes"][0][:, [1, 0, 3, 2]], atol=1e-2
    )
    categories = np.array([0, 2, 5, 9])[ref["classes"][0]]
    np.testing.assert_array_equal(out["detection_classes"][0], categories)
    # The padding's content does not matter: the graph sets it to the pixel mean.
    black = dict(inputs, image=inputs["image"].copy())
    black["image"][:, 91:] = 0
    black["image"][:, :, 127:] = 0
    np.testing.assert_array_equal(runner.run(black)["detection_scores"], out["detection_scores"])
    # The runner resizes and pads as prepare_input does.
    np.testing.assert_array_equal(runner(tiny["image"])["detection_boxes"], out["detection_boxes"])


def test_bad_litert_options_are_refused_naming_them(tiny, tmp_path, capsys):
    base = ["export", "--weights", str(tiny["weights"]), "--out", str(tmp_path / "x")]
    lite = [*base, "--format", "litert"]
    cases = [
        (["--quantize", "int4"], "--quantize must be one of float16, dynamic (or none: float32)"),
        (["--quantize", "int8"], "--quantize int8 is not available"),
        (["--tta"], "--tta do not apply with --format litert"),
        (["--input-type", "image_tensor"], "--input-type do not apply with --format litert"),
    ]
    for extra, message in cases:
        assert cli.main([*lite, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert cli.main([*base, "--quantize", "float16"]) == 2
    assert "--quantize applies to --format litert only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _errors(out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    """How far a quantized file's detections are from the Keras model's: the
    largest score difference of the sorted score lists, and the share of the
    Keras top-20 boxes with a same-class LiteRT box at IoU >= 0.9."""
    from atss_tf.boxes import iou

    k = 20
    score = float(np.max(np.abs(out["detection_scores"][0] - ref["scores"][0])))
    lite = out["detection_boxes"][0][:, [1, 0, 3, 2]]
    overlaps = np.asarray(iou(ref["boxes"][0][:k, None], lite[None]))  # [k, D]
    categories = np.array([0, 2, 5, 9])[ref["classes"][0][:k]]
    same = categories[:, None] == out["detection_classes"][0][None]
    matched = float(np.mean(np.max(np.where(same, overlaps, 0.0), axis=1) >= 0.9))
    return {"score": score, "matched": matched}


# Measured on the tiny untrained model and the photo, model seeds 0-3
# (2026-12-07): float16 6.1e-5 to 5.1e-4 and 17 to 20 of 20 boxes, dynamic
# 5.1e-4 to 1.1e-3 and 17 to 18 of 20. An untrained head scores every box about
# 0.01, so a small score change lets NMS keep a neighbour instead; the bounds
# hold for every seed measured, and the fixture's seed makes the run repeatable.
# benchmarks/RESULTS.md has a trained model's agreement.
BOUNDS = {
    "float16": {"score": 1e-3, "matched": 0.8},
    "dynamic": {"score": 1e-2, "matched": 0.75},
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["float16", "dynamic"])
def test_quantized_files_stay_within_their_measured_bounds(tiny, tmp_path, mode):
    runner = _export(tiny, tmp_path / mode, "--quantize", mode)
    assert json.loads((tmp_path / mode / "model.json").read_text())["quantize"] == mode
    inputs = prepare_input(tiny["image"], runner.params)
    errors = _errors(runner.run(inputs), _keras(tiny["model"], inputs))
    print(mode, errors)
    assert errors["score"] <= BOUNDS[mode]["score"], errors
    assert errors["matched"] >= BOUNDS[mode]["matched"], errors
