"""Post-processing: the official detections, a slow NumPy reference, XLA, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from atss_tf.anchors import generate_anchors
from atss_tf.boxes import coder_for_model
from atss_tf.config import Config
from atss_tf.postprocess import class_aware_nms, postprocess
from tests.helpers.fixtures import fixture_head_outputs, inclusive_to_continuous
from tests.helpers.tiny import postprocess_args


@pytest.fixture(scope="module")
def compat():
    return Config(official_compat=True)


@pytest.fixture(scope="module")
def grid(compat):
    return generate_anchors((512, 512), compat.model.anchors)


@pytest.fixture(scope="module")
def head(official_outputs):
    return fixture_head_outputs(official_outputs)


def _numpy(det: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in det.items()}


def _ranked(boxes, scores, labels):
    """Rows ordered by descending score; exact ties ordered by label, then box."""
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], labels, -scores))
    return boxes[order], scores[order], labels[order]


# --------------------------------------------------------------------------- #
# slow, independent NumPy reference of ATSS_SPEC §7
# --------------------------------------------------------------------------- #


def _np_iou(box, others):
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(union), where=union > 0)


def _np_greedy_nms(boxes, scores, classes, iou_threshold, max_output):
    """Indices kept by plain greedy class-aware NMS, best first."""
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if len(kept) == max_output:
            break
        same = [j for j in kept if classes[j] == classes[i]]
        if same and np.any(_np_iou(boxes[i], boxes[same]) > iou_threshold):
            continue
        kept.append(int(i))
    return np.asarray(kept, np.int64)


def reference_postprocess(cls, reg, ctr, grid, config, image_size):
    """One image: ``cls`` [A, C], ``reg`` [A, 4], ``ctr`` [A] -> (boxes, scores, labels)."""
    cfg = config
    pp = cfg.postprocess
    coder = coder_for_model(cfg.model)
    num_classes = cls.shape[1]
    p_all = 1.0 / (1.0 + np.exp(-cls.astype(np.float64)))
    c_all = 1.0 / (1.0 + np.exp(-ctr.astype(np.float64)))
    boxes, scores, labels = [], [], []
    for start, count in zip(grid.level_starts, grid.num_per_level):
        p = p_all[start : start + count]
        s = (p * c_all[start : start + count, None]).ravel()
        cand = np.flatnonzero(p.ravel() > pp.score_threshold)
        top = cand[np.argsort(-s[cand], kind="stable")][: pp.pre_nms_topk]
        anchor = start + top // num_classes
        decoded = np.asarray(coder.decode(reg[anchor], grid.boxes[anchor]))
        h, w = image_size
        if cfg.model.inclusive_geometry:  # the authors' clamp of inclusive boxes to [0, w - 1]
            decoded = np.clip(decoded, [0, 0, 1, 1], [w - 1, h - 1, w, h])
        else:
            decoded = np.clip(decoded, 0, [w, h, w, h])
        boxes.append(decoded)
        scores.append(np.sqrt(s[top]) if pp.score_mode == "sqrt" else s[top])
        labels.append(top % num_classes + 1)
    boxes, scores, labels = (np.concatenate(x) for x in (boxes, scores, labels))
    keep = _np_greedy_nms(boxes, scores, labels, pp.nms_iou, pp.max_detections)
    return boxes[keep], scores[keep], labels[keep]


def assert_matches_reference(det, b, head_b, grid, config, image_size):
    ref_boxes, ref_scores, ref_labels = reference_postprocess(
        head_b["cls_logits"][0],
        head_b["box_regression"][0],
        head_b["centerness"][0, :, 0],
        grid,
        config,
        image_size,
    )
    n = int(det["num_detections"][b])
    assert n == len(ref_scores)
    np.testing.assert_array_equal(det["classes"][b, :n], ref_labels)
    np.testing.assert_allclose(det["scores"][b, :n], ref_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(det["boxes"][b, :n], ref_boxes, atol=1e-3)
    assert np.all(det["classes"][b, n:] == 0) and np.all(det["scores"][b, n:] == 0)
    assert np.all(det["boxes"][b, n:] == 0)


# --------------------------------------------------------------------------- #
# the official detections
# --------------------------------------------------------------------------- #


def _assert_official(det, official_outputs):
    n = int(det["num_detections"][0])
    ref_scores = official_outputs["det_scores"]
    assert n == len(ref_scores) == 100
    ours = _ranked(det["boxes"][0, :n], det["scores"][0, :n], det["classes"][0, :n])
    ref = _ranked(
        inclusive_to_continuous(official_outputs["det_boxes_xyxy_inclusive"]),
        ref_scores,
        official_outputs["det_labels_1based"],
    )
    np.testing.assert_array_equal(ours[2], ref[2])
    np.testing.assert_allclose(ours[1], ref[1], atol=1e-4)
    np.testing.assert_allclose(ours[0], ref[0], atol=0.01)
    # Our rows come out already sorted by score.
    assert np.all(np.diff(det["scores"][0, :n]) <= 0)


def test_reproduces_official_detections(official_outputs, head, grid, compat):
    det = _numpy(
        postprocess(head, grid, *postprocess_args(compat), image_sizes=np.array([[512, 512]]))
    )
    _assert_official(det, official_outputs)
    assert det["boxes"].dtype == np.float32 and det["scores"].dtype == np.float32
    assert det["classes"].dtype == np.int32 and det["num_detections"].dtype == np.int32


def test_xla_compiled_gives_the_same_result(official_outputs, head, grid, compat):
    eager = _numpy(postprocess(head, grid, *postprocess_args(compat)))
    fn = tf.function(
        lambda o, s: postprocess(o, grid, *postprocess_args(compat), image_sizes=s),
        jit_compile=True,
    )
    jit = _numpy(fn(head, tf.constant([[512, 512]], tf.int32)))
    _assert_official(jit, official_outputs)
    np.testing.assert_array_equal(jit["classes"], eager["classes"])
    np.testing.assert_array_equal(jit["num_detections"], eager["num_detections"])
    np.testing.assert_allclose(jit["scores"], eager["scores"], atol=1e-6)
    np.testing.assert_allclose(jit["boxes"], eager["boxes"], atol=1e-3)


def test_matches_numpy_reference_on_fixture(head, grid, compat):
    det = _numpy(postprocess(head, grid, *postprocess_args(compat)))
    assert_matches_reference(det, 0, head, grid, compat, (512, 512))


def test_product_score_mode(head, grid, compat):
    cfg = Config(official_compat=True)
    cfg.postprocess.score_mode = "product"
    prod = _numpy(postprocess(head, grid, *postprocess_args(cfg)))
    sqrt = _numpy(postprocess(head, grid, *postprocess_args(compat)))
    # Same ranking, hence the same boxes; scores are the squares.
    np.testing.assert_array_equal(prod["classes"], sqrt["classes"])
    np.testing.assert_allclose(prod["boxes"], sqrt["boxes"], atol=1e-4)
    np.testing.assert_allclose(prod["scores"], sqrt["scores"] ** 2, rtol=1e-5)
    assert_matches_reference(prod, 0, head, grid, cfg, (512, 512))


@pytest.mark.parametrize("official", [True, False])
def test_clips_to_smaller_image_size(head, official):
    config = Config(official_compat=official)
    grid = generate_anchors((512, 512), config.model.anchors)
    height, width = 384, 448
    det = _numpy(postprocess(head, grid, *postprocess_args(config), image_sizes=[[height, width]]))
    full = _numpy(postprocess(head, grid, *postprocess_args(config)))
    n = int(det["num_detections"][0])
    boxes = det["boxes"][0, :n]
    assert np.all(boxes >= 0)
    assert np.all(boxes[:, [0, 2]] <= width) and np.all(boxes[:, [1, 3]] <= height)
    assert np.any(boxes[:, 2] == width) and np.any(boxes[:, 3] == height)
    assert np.any(full["boxes"][0, :, 2] > width)  # the clip really changed something
    assert_matches_reference(det, 0, head, grid, config, (height, width))


def test_box_beyond_the_border_official_and_continuous_clip(grid):
    """The authors clamp inclusive x1, x2 to [0, w - 1]: a box right of the image
    keeps 1 px (x1 = w - 1, x2 = w); the continuous clip makes it empty."""
    num = grid.num_anchors
    outputs = {
        "cls_logits": np.full((1, num, 3), -10.0, np.float32),
        "box_regression": np.zeros((1, num, 4), np.float32),
        "centerness": np.zeros((1, num, 1), np.float32),
    }
    outputs["cls_logits"][0, 100, 0] = 3.0
    outputs["box_regression"][0, 100, 0] = 10.0 * 600.0 / 64.0  # center moves 600 px right
    official = _numpy(postprocess(outputs, grid, *postprocess_args(Config(official_compat=True))))
    clean = _numpy(postprocess(outputs, grid, *postprocess_args(Config())))
    np.testing.assert_allclose(official["boxes"][0, 0, [0, 2]], [511.0, 512.0])
    np.testing.assert_allclose(clean["boxes"][0, 0, [0, 2]], [512.0, 512.0])


def test_batch_of_two_images(head, grid, compat):
    rng = np.random.default_rng(0)
    second = {
        "cls_logits": np.roll(head["cls_logits"], 7, axis=2) + rng.normal(0, 0.5, (1, 1, 80)),
        "box_regression": head["box_regression"][:, ::-1] * 0.7,
        "centerness": -head["centerness"],
    }
    second = {k: v.astype(np.float32) for k, v in second.items()}
    batch = {k: np.concatenate([head[k], second[k]]) for k in head}
    sizes = np.array([[512, 512], [400, 480]], np.float32)
    det = _numpy(postprocess(batch, grid, *postprocess_args(compat), image_sizes=sizes))
    assert det["boxes"].shape == (2, 100, 4)
    for b, one in enumerate((head, second)):
        assert_matches_reference(det, b, one, grid, compat, tuple(sizes[b]))
        alone = _numpy(
            postprocess(one, grid, *postprocess_args(compat), image_sizes=sizes[b : b + 1])
        )
        np.testing.assert_array_equal(det["classes"][b], alone["classes"][0])
        np.testing.assert_allclose(det["boxes"][b], alone["boxes"][0], atol=1e-4)


def test_nothing_above_threshold(grid, compat):
    num = grid.num_anchors
    outputs = {
        "cls_logits": np.full((2, num, 80), -10.0, np.float32),
        "box_regression": np.zeros((2, num, 4), np.float32),
        "centerness": np.zeros((2, num, 1), np.float32),
    }
    outputs["cls_logits"][1, 100, 5] = 3.0  # one candidate in the second image only
    fn = tf.function(lambda o: postprocess(o, grid, *postprocess_args(compat)), jit_compile=True)
    for det in (_numpy(postprocess(outputs, grid, *postprocess_args(compat))), _numpy(fn(outputs))):
        np.testing.assert_array_equal(det["num_detections"], [0, 1])
        assert not det["boxes"][0].any() and not det["scores"][0].any()
        assert not det["classes"][0].any()
        assert det["classes"][1, 0] == 6
        clipped = np.clip(grid.boxes[100], [0, 0, 1, 1], [511, 511, 512, 512])
        np.testing.assert_allclose(det["boxes"][1, 0], clipped, atol=1e-4)
        assert det["scores"][1, 0] == pytest.approx(np.sqrt(0.5 / (1 + np.exp(-3.0))), rel=1e-6)
        assert not det["boxes"][1, 1:].any()


# --------------------------------------------------------------------------- #
# the NMS on its own: several tiles, chains of suppression, invalid entries
# --------------------------------------------------------------------------- #


def _clustered_boxes(rng, batch, num):
    centers = rng.uniform(20, 200, (batch, 6, 2))[:, rng.integers(0, 6, num)]
    centers = centers + rng.normal(0, 6, centers.shape)
    half = rng.uniform(8, 30, (batch, num, 2))
    return np.concatenate([centers - half, centers + half], axis=-1).astype(np.float32)


@pytest.mark.parametrize("max_output", [20, 400])
def test_class_aware_nms_matches_greedy(max_output):
    rng = np.random.default_rng(5)
    batch, num = 2, 300
    boxes = _clustered_boxes(rng, batch, num)
    scores = rng.uniform(0, 1, (batch, num)).astype(np.float32)
    scores[0, 10:20] = scores[0, 5]  # exact ties rank by position
    classes = rng.integers(1, 4, (batch, num)).astype(np.int32)
    valid = rng.uniform(size=(batch, num)) > 0.1
    fn = tf.function(
        lambda *a: class_aware_nms(*a, iou_threshold=0.5, max_output=max_output, tile_size=16),
        jit_compile=True,
    )
    for idx, count in (
        class_aware_nms(boxes, scores, classes, valid, 0.5, max_output, tile_size=16),
        fn(boxes, scores, classes, valid),
    ):
        idx, count = np.asarray(idx), np.asarray(count)
        for b in range(batch):
            pool = np.flatnonzero(valid[b])
            ref = pool[
                _np_greedy_nms(boxes[b, pool], scores[b, pool], classes[b, pool], 0.5, max_output)
            ]
            assert count[b] == len(ref) and count[b] > 16  # more than one tile was needed
            np.testing.assert_array_equal(idx[b, : count[b]], ref)
            assert np.all(idx[b, count[b] :] == 0)


def test_class_aware_nms_keeps_overlapping_boxes_of_other_classes():
    boxes = np.array(
        [[[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]]], np.float32
    )
    scores = np.array([[0.9, 0.8, 0.7, 0.1]], np.float32)
    classes = np.array([[1, 2, 1, 1]], np.int32)
    valid = np.ones((1, 4), bool)
    idx, count = class_aware_nms(boxes, scores, classes, valid, 0.6, 10)
    assert int(count[0]) == 3
    np.testing.assert_array_equal(np.asarray(idx)[0, :3], [0, 1, 3])
