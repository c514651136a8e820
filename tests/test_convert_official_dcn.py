"""The authors' DCNv2 checkpoints (R-50 and ResNeXt-50 32x4d, ``official_atss_dcn``)
-> .keras via the CLI, checked against their FPN and head outputs, detections,
targets and losses on the fixtures' 320x400 crop padded to 320x416."""

from __future__ import annotations

import contextlib
import io

import keras
import numpy as np
import pytest

from atss_tf import cli
from atss_tf.config import Config
from atss_tf.data.transforms import make_image_info
from atss_tf.losses import atss_losses
from atss_tf.model import LEVELS, ModulatedDeformConv2D
from atss_tf.targets import TargetEncoder
from tests.helpers.fixtures import DCN_FIXTURES, DCN_MODELS, fixture_path, inclusive_to_continuous
from tests.helpers.tiny import loss_args

# Converting, writing and reloading a 130 MB model and running it takes about 20 s a
# checkpoint; the default lane checks the converted DCN layers alone
# (tests/test_model_dcn.py).
pytestmark = pytest.mark.slow

TOLERANCE = 1e-4  # norm(diff) / norm(ref) per tensor (fixture README)
CANVAS = (320, 416)  # the 320 x 400 crop, padded on the right to a multiple of 32
# What each checkpoint is (fixture README): backbone settings, DCN stages, tensors, parameters.
EXPECTED = {
    "r50_dcn": ((50, 1, 64, True), ("c3", "c4", "c5"), 354, "33,346,223", "ResNet-50"),
    "x50_32x4d_dcn": ((50, 32, 4, False), ("c4", "c5"), 346, "33,455,171", "ResNeXt-50 32x4d"),
}


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _canvas(crop: np.ndarray, pixel_mean_bgr) -> np.ndarray:
    """The crop on the 320 x 416 canvas, padded with the pixel mean: zeros after
    the model's normalisation, as the official code pads the normalised image."""
    canvas = np.empty((1, *CANVAS, 3), np.float32)
    canvas[0] = np.asarray(pixel_mean_bgr, np.float32)[::-1]
    canvas[0, : crop.shape[0], : crop.shape[1]] = crop
    return canvas


@pytest.fixture(scope="module", params=DCN_MODELS)
def converted(request, official_dcn_outputs, tmp_path_factory):
    """Convert each DCN checkpoint once through ``atss-tf convert official``,
    reload the .keras file, run the crop."""
    name = request.param
    want = official_dcn_outputs[name]
    checkpoint = fixture_path(f"{name}.pth", DCN_FIXTURES)
    out = tmp_path_factory.mktemp("convert_dcn") / f"{name}.keras"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = cli.main(["convert", "official", str(checkpoint), str(out)])
    assert rc == 0, buffer.getvalue()
    model = keras.saving.load_model(out)
    crop = want["input_rgb_uint8"]
    images = _canvas(crop.astype("float32"), model.detector_config.model.pixel_mean)
    info = make_image_info(crop.shape[:2], crop.shape[:2], CANVAS)[None]
    detections = model.predict({"images": images, "image_info": info}, verbose=0)
    return {
        "name": name,
        "want": want,
        "model": model,
        "stdout": buffer.getvalue(),
        "normalized": np.asarray(model.normalizer(images)),
        "pyramid": {k: np.asarray(v) for k, v in model.features(images).items()},
        "outputs": {k: np.asarray(v) for k, v in model(images).items()},
        "detections": {k: np.asarray(v) for k, v in detections.items()},
    }


def test_cli_reports_the_conversion(converted):
    _, stages, tensors, parameters, arch = EXPECTED[converted["name"]]
    text = converted["stdout"]
    assert f"tensors mapped: {tensors}" in text and f"parameters: {parameters}" in text
    assert f"{arch}, DCNv2 in {', '.join(stages)}, the head towers" in text


def test_the_architecture_is_read_off_the_keys(converted):
    backbone, stages, *_ = EXPECTED[converted["name"]]
    model = converted["model"]
    b = model.detector_config.model.backbone
    assert (b.depth, b.groups, b.width_per_group, b.stride_in_1x1) == backbone
    assert b.dcn_stages == stages and model.detector_config.model.head.dcn
    for s, blocks in enumerate(model.backbone.stages):
        deformable = {isinstance(block.conv2, ModulatedDeformConv2D) for block in blocks}
        assert deformable == {f"c{s + 2}" in stages}
    for tower in (model.head.cls_tower_convs, model.head.bbox_tower_convs):
        assert [isinstance(c, ModulatedDeformConv2D) for c in tower] == [False] * 3 + [True]
    grid = model.anchor_grid(CANVAS)
    np.testing.assert_allclose(
        grid.boxes, inclusive_to_continuous(converted["want"]["anchors_xyxy_inclusive"]), atol=1e-4
    )


def test_normalisation_matches_official_input(converted):
    got = converted["normalized"].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, converted["want"]["input_normalized_nchw"], atol=1e-4)


@pytest.mark.parametrize("level", LEVELS)
def test_fpn_outputs_match_official(converted, level):
    want = converted["want"][f"fpn_{level}"]
    got = converted["pyramid"][level].transpose(0, 3, 1, 2)
    assert got.shape == want.shape
    assert relative_error(got, want) < TOLERANCE


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    "ours, theirs",
    [("cls_logits", "cls_logits"), ("box_regression", "bbox_reg"), ("centerness", "centerness")],
)
def test_head_outputs_match_official(converted, level, ours, theirs):
    grid = converted["model"].anchor_grid(CANVAS)
    i = LEVELS.index(level)
    start, count = grid.level_starts[i], grid.num_per_level[i]
    want = converted["want"][f"{theirs}_{level}"]
    want = want.transpose(0, 2, 3, 1).reshape(1, count, -1)
    got = converted["outputs"][ours][:, start : start + count]
    assert got.shape == want.shape
    assert relative_error(got, want) < TOLERANCE


def test_detections_match_official(converted):
    """``model.predict`` on the padded canvas, clipped to the 400 x 320 crop."""
    want, det = converted["want"], converted["detections"]
    n = int(det["num_detections"][0])
    want_scores = want["det_scores"]
    assert n == len(want_scores)
    order = np.argsort(-want_scores, kind="stable")
    np.testing.assert_array_equal(det["classes"][0, :n], want["det_labels_1based"][order])
    np.testing.assert_allclose(det["scores"][0, :n], want_scores[order], atol=1e-4)
    want_boxes = inclusive_to_continuous(want["det_boxes_xyxy_inclusive"][order])
    np.testing.assert_allclose(det["boxes"][0, :n], want_boxes, atol=0.01)


def _training_config(model) -> Config:
    """The official training settings (official_compat: ATSS, center margin 0.51,
    inclusive loss geometry) around the converted model."""
    cfg = Config(official_compat=True)
    cfg.model = model.detector_config.model
    return cfg


def _targets(converted):
    want = converted["want"]
    encoder = TargetEncoder.from_config(_training_config(converted["model"]), CANVAS)
    boxes = inclusive_to_continuous(want["train_gt_xyxy_inclusive"])
    return encoder(boxes, want["train_gt_labels_1based"], np.ones(len(boxes), bool))


def _tied_candidates(want, grid, k: int = 9) -> set[int]:
    """Anchors tied at the k-th smallest centre distance of a GT on a level:
    ATSS takes k of them, which is not defined (torch.topk's order on ties is
    unspecified; this project takes the lowest anchor index)."""
    centers = grid.centers
    gt = inclusive_to_continuous(want["train_gt_xyxy_inclusive"])
    gt_centers = (gt[:, :2] + gt[:, 2:]) / 2
    tied = set()
    for start, count in zip(grid.level_starts, grid.num_per_level):
        for c in gt_centers:
            d = np.linalg.norm(centers[start : start + count] - c, axis=1)
            kth = np.sort(d)[k - 1]
            at_kth = np.flatnonzero(np.abs(d - kth) < 1e-4)
            if np.sum(d < kth - 1e-4) + len(at_kth) > k:
                tied |= {int(start + i) for i in at_kth}
    return tied


def test_targets_match_official(converted):
    """The same ATSS targets, except where a GT's 9th candidate on a level is a
    tie between anchors at equal distances (here one pair, on P4)."""
    want = converted["want"]
    out = _targets(converted)
    cls = out["cls_targets"].numpy()
    cls_ref = want["train_cls_targets"]
    differ = set(np.flatnonzero(cls != cls_ref).tolist())
    assert len(differ) <= 2 and differ <= _tied_candidates(
        want, converted["model"].anchor_grid(CANVAS)
    )
    both = (cls > 0) & (cls_ref > 0)
    assert both.sum() > 40
    np.testing.assert_allclose(
        out["box_targets"].numpy()[both], want["train_reg_targets"][both], atol=1e-5
    )


def test_losses_match_official(converted):
    """The model's outputs with the official targets give the official losses
    (official-compat loss geometry, the converted config's)."""
    want, model = converted["want"], converted["model"]
    targets = {
        "cls_targets": want["train_cls_targets"][None].astype(np.int32),
        "box_targets": want["train_reg_targets"][None].astype(np.float32),
    }
    anchors = model.anchor_grid(CANVAS).boxes
    losses = atss_losses(
        converted["outputs"], targets, anchors, *loss_args(_training_config(model))
    )
    for ours, theirs in (
        ("cls_loss", "loss_cls"),
        ("reg_loss", "loss_reg"),
        ("centerness_loss", "loss_centerness"),
    ):
        assert float(losses[ours]) == pytest.approx(float(want[theirs]), rel=1e-4), ours
