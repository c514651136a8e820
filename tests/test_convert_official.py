"""Official ATSS R-50 checkpoint -> .keras via the CLI, checked against the authors' outputs."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile

import keras
import numpy as np
import pytest

from atss_tf import cli
from atss_tf.model import LEVELS, ATSSDetector
from tests.helpers.fixtures import OFFICIAL_CHECKPOINTS, fixture_path, inclusive_to_continuous

TOLERANCE = 1e-4  # norm(diff) / norm(ref) per tensor (fixture README)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got.astype("float64") - want) / np.linalg.norm(want))


@pytest.fixture(scope="module", params=sorted(OFFICIAL_CHECKPOINTS))
def converted(request, official_outputs, tmp_path_factory):
    """Convert each official format once through ``atss-tf convert official``,
    reload, run the photo: every test below runs for the zip and the legacy file."""
    checkpoint = fixture_path(OFFICIAL_CHECKPOINTS[request.param])
    out = tmp_path_factory.mktemp("convert") / "atss_r50.keras"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = cli.main(["convert", "official", str(checkpoint), str(out)])
    assert rc == 0, buffer.getvalue()
    model = keras.saving.load_model(out)
    image = official_outputs["input_rgb_uint8"].astype("float32")[None]
    return {
        "model": model,
        "path": out,
        "stdout": buffer.getvalue(),
        "normalized": np.asarray(model.normalizer(image)),
        "pyramid": {k: np.asarray(v) for k, v in model.features(image).items()},
        "outputs": {k: np.asarray(v) for k, v in model(image).items()},
    }


def test_cli_reports_the_conversion(converted):
    text = converted["stdout"]
    assert "tensors mapped: 324" in text
    assert "parameters: 32,350,490" in text
    assert "ResNet-50" in text


def test_converted_config_matches_official_settings(converted, official_outputs):
    model = converted["model"]
    assert isinstance(model, ATSSDetector)
    cfg = model.detector_config
    anchors = cfg.model.anchors
    assert (anchors.alignment, anchors.official_shapes, cfg.model.inclusive_geometry) == (
        "official",
        True,
        True,
    )
    assert cfg.postprocess.score_mode == "sqrt"
    b = cfg.model.backbone
    assert (b.depth, b.groups, b.width_per_group, b.stride_in_1x1) == (50, 1, 64, True)
    assert cfg.model.num_classes == 80 and cfg.model.fpn.p7_from_relu and cfg.model.input_bgr
    np.testing.assert_allclose(cfg.model.pixel_mean, official_outputs["pixel_mean_bgr"].ravel())
    np.testing.assert_allclose(
        cfg.model.pixel_std, np.broadcast_to(official_outputs["pixel_std"].ravel(), (3,))
    )
    grid = model.anchor_grid((512, 512))
    np.testing.assert_allclose(
        grid.boxes, inclusive_to_continuous(official_outputs["anchors_xyxy_inclusive"]), atol=1e-4
    )


def test_normalisation_matches_official_input(converted, official_outputs):
    got = converted["normalized"].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, official_outputs["input_normalized_nchw"], atol=1e-4)


@pytest.mark.parametrize("level", LEVELS)
def test_fpn_outputs_match_official(converted, official_outputs, level):
    want = official_outputs[f"fpn_{level}"]
    got = converted["pyramid"][level].transpose(0, 3, 1, 2)
    assert got.shape == want.shape
    assert relative_error(got, want) < TOLERANCE


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    "ours, theirs",
    [("cls_logits", "cls_logits"), ("box_regression", "bbox_reg"), ("centerness", "centerness")],
)
def test_head_outputs_match_official(converted, official_outputs, level, ours, theirs):
    """The flattened model outputs, sliced per level, against the NCHW reference maps."""
    model = converted["model"]
    grid = model.anchor_grid((512, 512))
    i = LEVELS.index(level)
    start, count = grid.level_starts[i], grid.num_per_level[i]
    want = official_outputs[f"{theirs}_{level}"]  # [1, A*k, h, w], A = 1
    want = want.transpose(0, 2, 3, 1).reshape(1, count, -1)
    got = converted["outputs"][ours][:, start : start + count]
    assert got.shape == want.shape
    assert relative_error(got, want) < TOLERANCE


def test_cli_reports_bad_inputs(tmp_path, capsys, official_checkpoint):
    out = str(tmp_path / "m.keras")
    assert cli.main(["convert", "official", str(tmp_path / "nope.pth"), out]) == 1
    assert "checkpoint not found" in capsys.readouterr().err

    text_file = tmp_path / "notes.pth"
    text_file.write_text("not a checkpoint")
    assert cli.main(["convert", "official", str(text_file), out]) == 1
    assert "is not a torch.save checkpoint" in capsys.readouterr().err

    assert cli.main(["convert", "official", str(official_checkpoint), str(tmp_path / "m.h5")]) == 2
    assert "must end with .keras" in capsys.readouterr().err

    bogus = tmp_path / "other.pth"
    with zipfile.ZipFile(bogus, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")  # an empty dict
    assert cli.main(["convert", "official", str(bogus), out]) == 1
    assert "no tensors found" in capsys.readouterr().err

    assert cli.main(["convert", "mmdet", str(official_checkpoint), out]) == 2
    assert "invalid choice: 'mmdet'" in capsys.readouterr().err


def _shape_only_state(blocks3: int, conv2: tuple, p6_in: int = 256) -> dict:
    z = np.zeros
    state = {f"backbone.body.layer3.{i}.conv1.weight": z((1, 1, 1, 1)) for i in range(blocks3)}
    state.update(
        {
            "backbone.body.layer1.0.conv2.weight": z(conv2),
            "backbone.body.layer1.0.conv3.weight": z((256, conv2[0], 1, 1)),
            "backbone.fpn.fpn_inner2.weight": z((256, 512, 1, 1)),
            "backbone.fpn.top_blocks.p6.weight": z((256, p6_in, 3, 3)),
            "rpn.head.cls_tower.0.weight": z((256, 256, 3, 3)),
            "rpn.head.cls_tower.1.weight": z((256,)),
            "rpn.head.bbox_pred.bias": z((4,)),
            "rpn.head.cls_logits.bias": z((80,)),
        }
    )
    return state


def test_infer_config_reads_resnext_101_and_refuses_p6_from_c5():
    from atss_tf.convert import ConversionError, infer_config

    cfg = infer_config(_shape_only_state(23, (256, 8, 3, 3)))  # X-101 32x8d
    b = cfg.model.backbone
    assert (b.depth, b.groups, b.width_per_group, b.stride_in_1x1) == (101, 32, 8, False)
    assert (cfg.model.head.num_convs, cfg.model.head.use_group_norm) == (1, True)
    assert infer_config(
        _shape_only_state(23, (256, 8, 3, 3)), stride_in_1x1=True
    ).model.backbone.stride_in_1x1
    with pytest.raises(ConversionError, match="P6 computed from C5"):
        infer_config(_shape_only_state(6, (64, 64, 3, 3), p6_in=2048))
    with pytest.raises(ConversionError, match="layer3 has 4 blocks"):
        infer_config(_shape_only_state(4, (64, 64, 3, 3)))


def test_model_predict_reproduces_official_detections(converted, official_outputs):
    """End to end through ``model.predict``: network + post-processing (fixture README)."""
    image = official_outputs["input_rgb_uint8"].astype("float32")[None]
    det = converted["model"].predict(image, verbose=0)
    n = int(det["num_detections"][0])
    want_scores = official_outputs["det_scores"]
    assert n == len(want_scores)
    order = np.argsort(-want_scores, kind="stable")
    np.testing.assert_array_equal(
        det["classes"][0, :n], official_outputs["det_labels_1based"][order]
    )
    np.testing.assert_allclose(det["scores"][0, :n], want_scores[order], atol=1e-4)
    want_boxes = inclusive_to_continuous(official_outputs["det_boxes_xyxy_inclusive"][order])
    np.testing.assert_allclose(det["boxes"][0, :n], want_boxes, atol=0.01)


def test_predict_cli_draws_boxes_on_the_photo(converted, official_outputs, tmp_path, capsys):
    from PIL import Image

    photo = tmp_path / "astronaut.png"
    Image.fromarray(official_outputs["input_rgb_uint8"]).save(photo)
    out = tmp_path / "pred"
    rc = cli.main(
        [
            "predict",
            "--weights",
            str(converted["path"]),
            "--images",
            str(photo),
            "--out",
            str(out),
            "--score-threshold",
            "0.0",
        ]
    )
    assert rc == 0
    picture = out / "astronaut.png.detections.png"
    assert picture.exists()
    records = json.loads((out / "detections.json").read_text())
    assert len(records) == 100 and {"box_xyxy", "score", "class_name"} <= set(records[0])
    assert all(r["image"] == str(photo) for r in records)
    from atss_tf.data.coco_names import COCO_CLASS_NAMES

    assert {r["class_name"] for r in records} <= set(COCO_CLASS_NAMES)
    assert "100 detections (100 drawn)" in capsys.readouterr().out
    # The drawn picture differs from the photo drawn without boxes.
    drawn = np.asarray(Image.open(picture).convert("RGB"), dtype=np.float32)
    plain_path = tmp_path / "plain.png"
    from atss_tf.visualization import save_detection_grid

    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, int)}
    save_detection_grid(
        [official_outputs["input_rgb_uint8"]], [empty], ["x"], plain_path, titles=["astronaut.png"]
    )
    plain = np.asarray(Image.open(plain_path).convert("RGB"), dtype=np.float32)
    assert drawn.shape == plain.shape
    assert np.abs(drawn - plain).mean() > 1.0
