"""Paper Table 1 switches: each changes exactly what it names, and nothing else.

GroupNorm (``model.head.use_group_norm``), the box loss (``loss.box_loss``),
positives limited to the GT box (``assigner.center_in_box``), the centerness
branch (``model.head.centerness``) and the per-level scalar
(``model.head.learnable_scales``).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from atss_tf.anchors import generate_anchors
from atss_tf.boxes import BoxCoder
from atss_tf.config import Config, ConfigError, load_config
from atss_tf.losses import atss_losses
from atss_tf.model import build_detector
from atss_tf.model.head import ATSSHead
from atss_tf.postprocess import postprocess
from atss_tf.targets import TargetEncoder
from tests.helpers.reference_atss import pairwise_iou, reference_atss
from tests.helpers.tiny import loss_args, postprocess_args, tiny_config

# A flat box whose edges lie on P3 anchor-centre rows (y = 100 and 108): no
# P3 centre is strictly inside it, yet 64-pixel anchors there overlap it well.
FLAT_BOX = np.array([[100.0, 100.0, 300.0, 108.0]], np.float32)
CANVAS = (256, 384)


def _smooth_l1(x: np.ndarray, beta: float) -> np.ndarray:
    ax = np.abs(x)
    return np.where(ax < beta, 0.5 * ax**2 / beta, ax - 0.5 * beta)


def _two_positives():
    """Two positive anchors, their predictions, targets and the coder."""
    coder = BoxCoder()
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    target_boxes = np.array([[0, 0, 10, 10], [2, 1, 10, 13]], np.float32)
    pred_boxes = np.array([[5, 0, 15, 10], [2, 1, 10, 13]], np.float32)
    outputs = {
        "cls_logits": np.array([[[0.3], [-0.2]]], np.float32),
        "box_regression": coder.encode(pred_boxes, anchors).numpy()[None],
        "centerness": np.array([[[0.0], [1.5]]], np.float32),
    }
    targets = {
        "cls_targets": np.array([[1, 1]], np.int32),
        "box_targets": coder.encode(target_boxes, anchors).numpy()[None],
    }
    return outputs, targets, anchors


def _losses(cfg: Config, outputs, targets, anchors) -> dict[str, float]:
    out = atss_losses(
        outputs, targets, anchors, *loss_args(cfg), centerness=cfg.model.head.centerness
    )
    return {k: float(v) for k, v in out.items()}


# ----------------------------------------------------------------- box loss


def test_smooth_l1_box_loss_on_deltas_matches_formula():
    outputs, targets, anchors = _two_positives()
    cfg = load_config(None, ["loss.box_loss=smooth_l1", "loss.reg_loss_weight=1.0"])
    cfg.model.head.centerness = False  # the RetinaNet baseline: plain mean over positives
    got = _losses(cfg, outputs, targets, anchors)
    diff = outputs["box_regression"][0] - targets["box_targets"][0]  # (10, 10, 5, 5) deltas
    expected = _smooth_l1(diff, 0.11).mean(axis=-1).sum() / 2.0
    assert got["reg_loss"] == pytest.approx(expected, rel=1e-5)
    # maskrcnn-benchmark divides the summed smooth L1 by 4 * P: the same number.
    assert got["reg_loss"] == pytest.approx(_smooth_l1(diff, 0.11).sum() / (4 * 2), rel=1e-5)


def test_box_loss_switch_changes_only_the_regression_loss():
    outputs, targets, anchors = _two_positives()
    giou = _losses(Config(), outputs, targets, anchors)
    l1 = _losses(load_config(None, ["loss.box_loss=smooth_l1"]), outputs, targets, anchors)
    assert l1["cls_loss"] == giou["cls_loss"]
    assert l1["centerness_loss"] == giou["centerness_loss"]
    assert l1["reg_loss"] != pytest.approx(giou["reg_loss"], rel=1e-3)
    # With centerness on, smooth L1 is weighted by the centerness targets like GIoU.
    w = np.array([1.0, np.sqrt(0.3)])
    diff = outputs["box_regression"][0] - targets["box_targets"][0]
    expected = 2.0 * (w * _smooth_l1(diff, 0.11).mean(-1)).sum() / w.sum()
    assert l1["reg_loss"] == pytest.approx(expected, rel=1e-5)


def test_smooth_l1_beta_zero_is_l1():
    outputs, targets, anchors = _two_positives()
    cfg = load_config(
        None, ["loss.box_loss=smooth_l1", "loss.smooth_l1_beta=0", "model.head.centerness=false"]
    )
    diff = outputs["box_regression"][0] - targets["box_targets"][0]
    expected = 2.0 * np.abs(diff).mean(-1).sum() / 2.0
    assert _losses(cfg, outputs, targets, anchors)["reg_loss"] == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------- centerness


def test_centerness_off_drops_its_loss_and_weighting():
    outputs, targets, anchors = _two_positives()
    on = _losses(Config(), outputs, targets, anchors)
    cfg = load_config(None, ["model.head.centerness=false"])
    off = _losses(cfg, outputs, targets, anchors)
    assert off["centerness_loss"] == 0.0 and on["centerness_loss"] > 0
    assert off["cls_loss"] == on["cls_loss"]
    giou_loss = np.array([2.0 / 3.0, 0.0])  # the first prediction overlaps 50 of 150
    assert off["reg_loss"] == pytest.approx(2.0 * giou_loss.sum() / 2.0, rel=1e-5)
    w = np.array([1.0, np.sqrt(0.3)])
    assert on["reg_loss"] == pytest.approx(2.0 * (w * giou_loss).sum() / w.sum(), rel=1e-5)
    # Whatever the (absent) branch would predict, nothing moves.
    outputs["centerness"] = np.full_like(outputs["centerness"], 7.0)
    assert _losses(cfg, outputs, targets, anchors) == off


def _postprocess_case(centerness_logits: np.ndarray):
    cfg = Config()
    grid = generate_anchors((128, 128), cfg.model.anchors)
    num = grid.num_anchors
    cls = np.full((1, num, 2), -20.0, np.float32)
    # Three confident anchors far apart (no NMS interaction), different classes.
    picks = {10: (0, 2.0), 100: (1, 0.5), 200: (0, -1.0)}
    for anchor, (c, logit) in picks.items():
        cls[0, anchor, c] = logit
    outputs = {
        "cls_logits": cls,
        "box_regression": np.zeros((1, num, 4), np.float32),
        "centerness": centerness_logits.reshape(1, num, 1).astype(np.float32),
    }
    return outputs, grid, cfg, picks


def test_centerness_off_scores_are_class_probabilities():
    rng = np.random.default_rng(0)
    num = generate_anchors((128, 128), Config().model.anchors).num_anchors
    results = []
    for ctr in (rng.normal(0, 3, num), rng.normal(0, 3, num)):
        outputs, grid, cfg, picks = _postprocess_case(ctr)
        det = postprocess(outputs, grid, *postprocess_args(cfg), centerness=False)
        results.append({k: v.numpy() for k, v in det.items()})
        n = int(det["num_detections"][0])
        expected = sorted((1 / (1 + np.exp(-logit)) for _, logit in picks.values()), reverse=True)
        np.testing.assert_allclose(det["scores"][0, :n], expected, rtol=1e-6)
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key])
    # With the branch on, the same outputs score sqrt(p * sigmoid(centerness)).
    on = postprocess(outputs, grid, *postprocess_args(cfg))
    assert not np.allclose(on["scores"][0, :3], results[1]["scores"][0, :3])


# ----------------------------------------------------- head: branch and scalar


def _head(**kw) -> ATSSHead:
    head = ATSSHead(num_classes=3, num_convs=1, channels=16, group_norm_groups=4, **kw)
    head.build([(None, None, None, 8)] * 5)
    return head


def test_head_without_centerness_and_scales_has_no_such_weights():
    full = _head()
    bare = _head(centerness=False, learnable_scales=False)
    names = [w.path for w in bare.weights]
    assert not any("centerness" in n or "scale" in n for n in names), names
    assert len(full.weights) == len(bare.weights) + 2 + 5  # centerness kernel, bias; 5 scales
    rebuilt = ATSSHead.from_config(bare.get_config())
    assert (rebuilt.use_centerness, rebuilt.learnable_scales) == (False, False)


def test_scalar_switch_multiplies_the_box_output_only():
    features = [tf.random.normal((1, s, s, 8), seed=i) for i, s in enumerate((8, 4, 2, 1, 1))]
    with_scales = _head()
    without = _head(learnable_scales=False)
    for src, dst in zip(
        [w for w in with_scales.weights if "scale" not in w.path], without.weights, strict=True
    ):
        dst.assign(src)
    for level, scale in enumerate(with_scales.scales):
        scale.scale.assign(float(level + 2))
    a, b = with_scales(features), without(features)
    for level in range(5):
        np.testing.assert_allclose(
            a["box_regression"][level], (level + 2) * b["box_regression"][level], rtol=1e-5
        )
        np.testing.assert_array_equal(a["cls_logits"][level], b["cls_logits"][level])


def test_head_without_centerness_outputs_zero_logits():
    features = [tf.random.normal((2, s, s, 8)) for s in (8, 4, 2, 1, 1)]
    out = _head(centerness=False)(features)
    for level, x in enumerate(out["centerness"]):
        assert tuple(x.shape) == (2, features[level].shape[1], features[level].shape[2], 1)
        assert not np.any(x.numpy())


def test_group_norm_switch_removes_the_norm_layers():
    assert _head().cls_tower_norms and not _head(use_group_norm=False).cls_tower_norms


def test_detector_with_every_switch_off_saves_reloads_and_trains(tmp_path):
    cfg = tiny_config(
        [
            "model.head.use_group_norm=false",
            "model.head.centerness=false",
            "model.head.learnable_scales=false",
            "loss.box_loss=smooth_l1",
            "assigner.type=iou",
            "assigner.center_in_box=false",
        ]
    )
    model = build_detector(cfg)
    images = np.random.default_rng(0).uniform(0, 255, (2, 128, 128, 3)).astype(np.float32)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert not loaded.detector_config.model.head.centerness
    a, b = model.predict_on_batch(images), loaded.predict_on_batch(images)
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-6)
    assert a["scores"].max() <= 1.0
    from atss_tf.training.fit import build_training_model

    train = build_training_model(cfg)
    boxes = np.zeros((2, 8, 4), np.float32)
    boxes[:, 0] = [10, 20, 70, 90]
    labels = np.zeros((2, 8), np.int32)
    labels[:, 0] = 2
    y = TargetEncoder.from_config(cfg, (128, 128)).encode_batch(boxes, labels, labels > 0)
    logs = train.train_on_batch(images, y, return_dict=True)
    assert logs["centerness_loss"] == 0.0 and np.isfinite(logs["reg_loss"]) and logs["reg_loss"] > 0


# ------------------------------------------------------------ in the GT box


def _encode(cfg: Config, boxes: np.ndarray) -> dict[str, np.ndarray]:
    enc = TargetEncoder(cfg.model, cfg.assigner, CANVAS, max_instances=len(boxes))
    out = enc(boxes, np.ones(len(boxes), np.int32), np.ones(len(boxes), bool))
    return {k: v.numpy() for k, v in out.items()}


@pytest.mark.parametrize("assigner", ["atss", "atss_dense"])
def test_atss_center_in_box_switch_matches_reference(assigner):
    grid = generate_anchors(CANVAS, Config().model.anchors)
    results = {}
    for on in (True, False):
        cfg = load_config(
            None, [f"assigner.type={assigner}", f"assigner.center_in_box={str(on).lower()}"]
        )
        got = _encode(cfg, FLAT_BOX)["matched_gt"]
        ref = reference_atss(
            grid.boxes,
            grid.centers,
            grid.num_per_level,
            1,
            FLAT_BOX,
            margin=cfg.assigner.center_margin if on else -np.inf,
        )
        np.testing.assert_array_equal(got, ref)
        results[on] = got
    inside, anywhere = results[True] >= 0, results[False] >= 0
    assert anywhere.sum() > inside.sum() >= 0
    assert np.all(anywhere[inside])  # switching off only adds positives
    centers = grid.centers[anywhere & ~inside]
    assert np.all(
        (centers[:, 1] <= 100.01) | (centers[:, 1] >= 107.99)
    )  # the added ones sit on an edge


def test_iou_matching_center_in_box_switch():
    grid = generate_anchors(CANVAS, Config().model.anchors)
    iou = pairwise_iou(grid.boxes.astype(np.float64), FLAT_BOX.astype(np.float64))[:, 0]
    # IoU >= 0.5, plus the low-quality matches (every anchor tying the GT's best IoU).
    matched_by_iou = (iou >= 0.5) | (iou == iou.max())
    c = grid.centers
    b = FLAT_BOX[0]
    strictly_inside = (
        np.minimum.reduce([c[:, 0] - b[0], c[:, 1] - b[1], b[2] - c[:, 0], b[3] - c[:, 1]]) > 0.01
    )
    on = _encode(load_config(None, ["assigner.type=iou"]), FLAT_BOX)
    off = _encode(
        load_config(None, ["assigner.type=iou", "assigner.center_in_box=false"]), FLAT_BOX
    )
    np.testing.assert_array_equal(off["cls_targets"] > 0, matched_by_iou)
    np.testing.assert_array_equal(on["cls_targets"] > 0, matched_by_iou & strictly_inside)
    np.testing.assert_array_equal(
        on["cls_targets"] == -1,
        (matched_by_iou & ~strictly_inside) | ((iou >= 0.4) & ~matched_by_iou),
    )
    assert (matched_by_iou & ~strictly_inside).any()  # the case the switch is about occurs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["assigner.type=fcos", "model.head.regression=point", "assigner.center_in_box=false"],
            "FCOS selects points inside",
        ),
        (["model.head.regression=point", "assigner.center_in_box=false"], "point regression"),
        (["loss.box_loss=l2"], "loss.box_loss='l2'"),
        (["loss.smooth_l1_beta=-1"], "loss.smooth_l1_beta=-1"),
    ],
)
def test_switch_combinations_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
